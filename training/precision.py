"""Keep LoRA's update in the forward pass under bf16 autocast.

Under autocast the frozen base projection returns bf16, and PEFT adds the LoRA delta
``lora_B(lora_A(dropout(x))) * scaling`` to it in bf16 and casts the sum back to bf16. bf16 keeps 8
mantissa bits (~0.4% relative), so a delta under half a unit in the last place of the base output is
rounded away: early in training (``lora_B`` starts at zero) most of the update never reaches the
loss, and a bf16 run lags the fp32 run at equal steps. Here the sum is taken in fp32 and kept fp32:
the LoRA matmuls still run in bf16 under autocast (their cost is unchanged), only the addition and
the layer's output are fp32, and the next autocast op (an attention or MLP matmul) casts as before.
Into the residual stream (``o_proj``, ``down_proj``) the delta then arrives whole. The q/k/v deltas
are cast to bf16 again at attention's input (autocast runs SDPA in bf16); keeping attention in fp32
as well was not needed to reach the fp32 loss, so it stays in bf16 (its speed).

Applied only to a model training in bf16 autocast; fp32 training keeps PEFT's own forward.
"""

from __future__ import annotations

import logging
import types
from typing import Any

log = logging.getLogger("customizer.training")


def lora_sum_in_fp32(model: Any) -> int:
    """Make every plain LoRA linear layer of ``model`` add its delta to the base output in fp32 and
    return the fp32 sum while autocast is on (outside autocast, PEFT's forward runs unchanged).

    Layers with a LoRA variant (DoRA, ...), merged or disabled adapters, and mixed-adapter batches
    keep PEFT's forward: the replacement covers the plain ``base + B(A(x)) * scaling`` only.

    Args:
        model: a PEFT model (or any module holding PEFT LoRA layers).

    Returns:
        How many layers now take the fp32 sum.
    """
    from peft.tuners.lora.layer import Linear  # delayed: peft is heavy (start-up time)

    wrapped = 0
    for module in model.modules():
        # Exactly PEFT's Linear: subclasses (quantized layers) compute their base output differently.
        if type(module) is Linear and getattr(module.forward, "__func__", None) is not _forward_with_fp32_sum:
            module.forward = types.MethodType(_forward_with_fp32_sum, module)
            wrapped += 1
    if wrapped:
        log.info("LoRA deltas summed in fp32 under bf16 autocast in %d layer(s)", wrapped)
    return wrapped


def _forward_with_fp32_sum(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """PEFT's ``lora.Linear.forward`` for the plain case, with the sum in fp32 and an fp32 result."""
    import torch
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS, Linear

    device = x.device.type
    plain = not (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
                 or any(name in self.lora_variant for name in self.active_adapters))
    if not (plain and torch.is_autocast_enabled(device)):
        return Linear.forward(self, x, *args, **kwargs)
    self._check_forward_args(x, *args, **kwargs)
    for key in VARIANT_KWARG_KEYS:  # PEFT's forward keeps these from the base layer too
        kwargs.pop(key, None)
    result = self.base_layer(x, *args, **kwargs).float()
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        delta = lora_B(lora_A(self.lora_dropout[name](self._cast_input_dtype(x, lora_A.weight.dtype))))
        result = result + delta.float() * self.scaling[name]
    return result

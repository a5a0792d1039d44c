"""Many LoRA adapters in one batch: each row of a batch gets its own adapter's LoRA contribution.

PEFT loads and holds the adapters (its LoRA branches stay switched off); a forward hook on every
LoRA layer adds ``B_i A_i x * scale_i`` for row ``i``'s adapter, gathered from the weights of every
adapter in memory stacked once (again when one is loaded or evicted), so a batch of requests for
eight adapters runs as one forward pass per token (the idea of S-LoRA's and Punica's batched LoRA
kernels, with ``torch.bmm``).

What this keeps exact:
- the base weights are never written: rows without an adapter, and every layer no adapter of the
  batch targets, compute exactly the base model (a hook adds exact zeros or is not run);
- a row only ever sees its own adapter's weights: the others' slots are indexed by other rows.
An adapter's rows compute ``W x + B (A x) * scale`` rather than a merged ``(W + B A * scale) x``,
which differs in the last bits of float rounding only (greedy answers on the tiny fp32 test model
are identical; the tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class _Stack:
    """One layer's adapters for a batch: ``a`` is [slots, r, in] (or [slots, vocab, r] for an
    embedding), ``b`` [slots, out, r] with the scale folded in; slot 0 is all zeros."""

    a: Any
    b: Any
    embedding: bool
    a_cat: Any = None  # Linear: every adapter's A one after the other, [adapters * r, in]
    b_cat: Any = None  # and their B, [adapters * r, out]


class BatchedLora:
    """The hooks on a PEFT model's LoRA layers and the adapters of the batch running now."""

    def __init__(self) -> None:
        self._hooked: set[int] = set()
        self._stacks: dict[int, _Stack] = {}  # id(layer) -> its stack for the running batch
        self._slots: Any = None  # per row: 0 (no adapter) or 1 + the adapter's index in the stacks
        self._onehot: Any = None  # the same, one-hot: [rows, 1 + adapters]
        self._keep: dict[int, Any] = {}  # rank -> which of the stacked columns each row keeps
        self._only: int | None = None  # the slot every row uses, when they all use one: no gather needed
        self._key: tuple[str, ...] | None = None  # the adapters the stacks were built for, in slot order

    def attach(self, model: Any) -> None:
        """Hook every LoRA layer of ``model`` not hooked yet (PEFT adds layers when an adapter
        targets modules the others do not).

        Raises:
            ValueError: a LoRA layer is neither a Linear nor an Embedding layer (names the module).
        """
        from peft.tuners.lora import Embedding, Linear  # delayed: peft is heavy (start-up time)

        for name, module in model.named_modules():
            if not hasattr(module, "lora_A") or not hasattr(module, "get_base_layer") or id(module) in self._hooked:
                continue
            if not isinstance(module, (Linear, Embedding)):
                raise ValueError(f"LoRA on {name} ({type(module).__name__}) is not served here: only Linear and Embedding layers")
            module.register_forward_hook(self._hook)
            self._hooked.add(id(module))

    def set_rows(self, model: Any, adapters: list[str | None], resident: list[str]) -> None:
        """From now on row ``i`` uses PEFT adapter ``adapters[i]`` (None: the base alone).

        Args:
            resident: every adapter in memory; the stacks hold them all and are built again only
                when this changes (PEFT names are never reused, so a name always means the same weights).
        """
        import torch  # delayed: torch is heavy (start-up time)

        if not any(a is not None for a in adapters):
            self._slots = None
            return
        key = tuple(resident)
        if key != self._key:
            with torch.no_grad():
                self._stacks = {id(module): self._stack(module, list(key)) for module in model.modules()
                                if id(module) in self._hooked and any(name in module.lora_A or name in getattr(module, "lora_embedding_A", {})
                                                                      for name in key)}
            self._key = key
        slot = {name: i + 1 for i, name in enumerate(key)}
        rows = [slot[a] if a is not None else 0 for a in adapters]
        self._only = rows[0] if len(set(rows)) == 1 else None
        self._slots = torch.tensor(rows, device=next(model.parameters()).device)
        self._onehot = torch.nn.functional.one_hot(self._slots, len(key) + 1).to(next(model.parameters()).dtype)
        self._keep = {}

    def select(self, keep: Any) -> None:
        """Keep only these rows (finished ones leave the batch)."""
        if self._slots is not None:
            self._slots, self._onehot, self._keep = self._slots[keep], self._onehot[keep], {}
            if self._only is None and bool((self._slots == self._slots[0]).all()):
                self._only = int(self._slots[0])

    @staticmethod
    def _stack(module: Any, distinct: list[str]) -> _Stack:
        import torch  # delayed: torch is heavy (start-up time)

        embedding = hasattr(module, "lora_embedding_A") and any(name in module.lora_embedding_A for name in distinct)
        pairs = []
        for name in distinct:
            if embedding and name in module.lora_embedding_A:
                # PEFT keeps an embedding's A as [r, vocab] and B as [out, r]
                pairs.append((module.lora_embedding_A[name].T, module.lora_embedding_B[name] * module.scaling[name]))
            elif not embedding and name in module.lora_A:
                pairs.append((module.lora_A[name].weight, module.lora_B[name].weight * module.scaling[name]))
            else:
                pairs.append(None)
        like = next(p for p in pairs if p is not None)
        rank = max(p[0].shape[1] if embedding else p[0].shape[0] for p in pairs if p is not None)
        a_shape = (like[0].shape[0], rank) if embedding else (rank, like[0].shape[1])
        a = torch.zeros((len(distinct) + 1, *a_shape), dtype=like[0].dtype, device=like[0].device)
        b = torch.zeros((len(distinct) + 1, like[1].shape[0], rank), dtype=like[1].dtype, device=like[1].device)
        for i, pair in enumerate(pairs, start=1):
            if pair is None:
                continue
            r = pair[1].shape[1]
            if embedding:
                a[i, :, :r] = pair[0]
            else:
                a[i, :r, :] = pair[0]
            b[i, :, :r] = pair[1]
        if embedding:
            return _Stack(a=a, b=b, embedding=True)
        return _Stack(a=a, b=b, embedding=False, a_cat=a[1:].reshape(-1, a.shape[-1]).contiguous(),
                      b_cat=b[1:].transpose(1, 2).reshape(-1, b.shape[1]).contiguous())

    def _hook(self, module: Any, args: tuple, output: Any) -> Any:
        import torch  # delayed: torch is heavy (start-up time)

        stack = self._stacks.get(id(module))
        if stack is None or self._slots is None:
            return output
        x = args[0]
        if stack.embedding:  # x: token ids [rows, tokens]
            low = stack.a[self._slots[:, None], x]  # [rows, tokens, r]
            delta = torch.bmm(low, stack.b[self._slots].transpose(1, 2))
        elif self._only is not None:
            delta = (x.to(stack.a.dtype) @ stack.a[self._only].T) @ stack.b[self._only].T
        else:
            # Every adapter's A at once, then each row keeps only its own adapter's r columns
            # (the others are multiplied by exact zeros): two plain matrix products, no gathers.
            rank = stack.a.shape[1]
            keep = self._keep.get(rank)
            if keep is None:  # [rows, 1, adapters * r], once per rank and set of rows
                keep = self._keep[rank] = self._onehot[:, 1:].repeat_interleave(rank, dim=1)[:, None, :]
            delta = ((x.to(stack.a_cat.dtype) @ stack.a_cat.T) * keep) @ stack.b_cat
        return output + delta.to(output.dtype)

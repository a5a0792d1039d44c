"""Generation for serve-models: greedy or sampled decoding with transformers, stop sequences, and
OpenAI's legacy ``logprobs`` for a prompt and what was generated.

Functions here take a model and a tokenizer and know nothing of adapters: ``ModelServer`` calls
them with its lock held and the requested adapter merged into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Generated:
    """One prompt's result: its token ids, the generated ids and text, and why generation ended."""

    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop sequence) or "length"
    logprobs: dict[str, Any] | None = None


def stop_list(stop: str | list[str] | None) -> list[str]:
    """A request's ``stop`` as a list.

    >>> stop_list(None), stop_list("\\n"), stop_list(["a", "b"])
    ([], ['\\n'], ['a', 'b'])
    """
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def first_stop(text: str, stop: list[str]) -> int | None:
    """Where the first stop sequence in ``text`` begins, or None.

    >>> first_stop("one. two.", ["."]), first_stop("one", ["."])
    (3, None)
    """
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop sequence (a stream holds them).

    >>> held_back("an end", ["ending"]), held_back("an end", ["stop"])
    (3, 0)
    """
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def decode(
    model: Any, tokenizer: Any, ids: list[int], max_tokens: int, temperature: float, top_p: float, stop: list[str],
    seed: int | None, ignore_eos: bool, min_tokens: int, streamer: Any, device: str,
) -> tuple[list[int], str]:
    """Generate up to ``max_tokens`` after ``ids`` (greedy when ``temperature`` is 0).

    Args:
        stop: stop sequences; generation ends once the decoded text holds one (the caller cuts it).
        seed: seeds torch's generator first, for reproducible sampling.
        ignore_eos: generate exactly ``max_tokens``, past any end-of-sequence token.
        min_tokens: no end-of-sequence before this many tokens.
        streamer: a transformers streamer that receives tokens as they come, or None.
        device: where the model is.

    Returns:
        The generated ids (an end-of-sequence token that ended them stays, as vLLM counts it) and
        the finish reason: "stop" at an end-of-sequence token, else "length".
    """
    import torch  # delayed: torch and transformers are heavy (start-up time)
    from transformers import StoppingCriteria, StoppingCriteriaList

    prompt_len = len(ids)

    class StopOnText(StoppingCriteria):
        """Stop once the generated text holds a stop sequence (checked on the decoded tail)."""

        def __call__(self, input_ids, scores, **kwargs):
            tail = tokenizer.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
            return torch.tensor([first_stop(tail, stop) is not None], device=input_ids.device)

    if seed is not None:
        torch.manual_seed(seed)
    eos = [t for t in {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))} if t is not None]
    sample = temperature > 0
    options: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "min_new_tokens": max_tokens if ignore_eos else min(min_tokens, max_tokens),
        "do_sample": sample,
        "eos_token_id": eos or None,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
    }
    if sample:
        options |= {"temperature": temperature, "top_p": top_p, "top_k": 0}
    else:
        options |= {"temperature": None, "top_p": None, "top_k": None}
    if stop:
        options["stopping_criteria"] = StoppingCriteriaList([StopOnText()])
    if streamer is not None:
        options["streamer"] = streamer
    input_ids = torch.tensor([ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **options)
    generated = out[0, prompt_len:].tolist()
    # The end-of-sequence token stays in the ids (it is scored and counted, as vLLM does); the
    # text leaves it out.
    finished = bool(generated) and generated[-1] in eos and not ignore_eos
    return generated, "stop" if finished else "length"


def score_logprobs(model: Any, tokenizer: Any, echoed: bool, full: list[int], top: int, prompt_len: int, device: str) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object for the echoed prompt (if any) and the generated tokens.

    Args:
        echoed: score the prompt's tokens too (``echo``); else only the generated ones.
        full: the prompt's ids followed by the generated ids.
        top: how many most likely alternatives to give per position (``top_logprobs``).
        prompt_len: how many of ``full`` are the prompt.

    Returns:
        ``tokens``, ``token_logprobs`` (None for the very first token, which has no context),
        ``top_logprobs`` and ``text_offset``, one entry per scored position.
    """
    import torch  # delayed: torch is heavy (start-up time)

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full], device=device)).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
    start = 0 if echoed else prompt_len
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = 0
    for position in range(start, len(full)):
        token = full[position]
        text = tokenizer.decode([token])
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if position == 0:  # the first token has no context to be scored in
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        row = logp[position - 1]
        token_logprobs.append(float(row[token]))
        if top > 0:
            values, indices = torch.topk(row, top)
            top_logprobs.append({tokenizer.decode([int(i)]): float(v) for v, i in zip(values, indices)})
        else:
            top_logprobs.append({})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}

"""Prompt rendering shared by training and evaluation, so both see exactly the same prompt text.

A record becomes ``(prompt_text, target)``: ``prompt_text`` is what the model is given (rendered with
the model's chat template, or the config's ``prompt_template``), ``target`` is the reference answer.
Training appends ``end_text`` (the end-of-turn marker) to the target; evaluation stops there.
``tokenize`` turns a rendered example into the token ids training sees and marks where the loss
starts; ingest measures lengths and previews the loss tokens with the very same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.catalog import CustomizationConfig
from data.formats import Record


@dataclass(frozen=True)
class Rendered:
    prompt: str
    target: str
    end_text: str  # what follows the target in a training sequence (e.g. "<|im_end|>")


def conversation(record: Record) -> list[dict[str, Any]]:
    if "messages" in record:
        return record["messages"]
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]


def render(record: Record, config: CustomizationConfig, tokenizer: Any) -> Rendered:
    """Render a canonical record into the prompt the model sees and the answer it should give.

    Chat records, and prompt/completion records under a ``chat`` config, go through the tokenizer's
    chat template: the prompt is the conversation up to the last assistant turn with the generation
    prompt appended, and the end text is whatever the template writes after the answer.
    """
    if config.prompt_format == "template" and "prompt" in record:
        head, _, _ = config.prompt_template.partition("{completion}")
        return Rendered(prompt=head.format(prompt=record["prompt"]), target=record["completion"], end_text=tokenizer.eos_token or "")
    messages = conversation(record)
    tools = record.get("tools") or None  # `or None`: some templates render tool boilerplate for []
    prompt = tokenizer.apply_chat_template(messages[:-1], tools=tools, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    answer = messages[-1]["content"]
    if not full.startswith(prompt + answer):
        raise ValueError(
            "the tokenizer's chat template does not render the prompt as a prefix of the full conversation; "
            "use prompt_format: template in the config"
        )
    end_text = full[len(prompt) + len(answer) :].rstrip()  # trailing newlines are not learned
    return Rendered(prompt=prompt, target=answer, end_text=end_text)


def stop_sequences(tokenizer: Any, sample: Rendered) -> list[str]:
    """Where generation ends: the end-of-turn text of the template and the tokenizer's EOS."""
    stops = [s for s in (sample.end_text, tokenizer.eos_token) if s]
    return list(dict.fromkeys(stops))


@dataclass(frozen=True)
class Tokens:
    """A training sequence: the loss is on ``input_ids[prompt_length:]`` (the answer and end text)."""

    input_ids: list[int]
    prompt_length: int


def tokenize(sample: Rendered, tokenizer: Any) -> Tokens:
    """Tokenize a rendered example the way TRL tokenizes a prompt/completion pair.

    The completion is the target plus the end text, with the tokenizer's EOS appended when it does
    not already end with it. The prompt and prompt+completion are tokenized separately and the
    loss starts where they diverge: a token that merges across the boundary belongs to the answer.
    """
    completion = sample.target + sample.end_text
    eos = tokenizer.eos_token
    if eos and not completion.endswith(eos):
        completion += eos
    prompt_ids = tokenizer(text=sample.prompt)["input_ids"]
    full_ids = tokenizer(text=sample.prompt + completion)["input_ids"]
    shared = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        shared += 1
    return Tokens(input_ids=list(full_ids), prompt_length=shared)

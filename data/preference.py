"""Rendering of preference (DPO) and reward (GRPO) records with the training prompt.

A preference record is ``{"prompt": str | messages, "chosen_response": str, "rejected_response": str}``;
a reward record is ``{"prompt": str | messages, ...answer columns}``. The prompt is rendered exactly
as SFT and evaluation render it (``data.prompts.render``), so every method sees the same prompt.
"""

from __future__ import annotations

from typing import Any

from core.catalog import CustomizationConfig
from data.ingest import Record
from data.prompts import Rendered, render


def prompt_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render_with_answer(prompt: str | list[dict[str, Any]], answer: str, config: CustomizationConfig, tokenizer: Any) -> Rendered:
    """Render a prompt followed by one candidate answer."""
    if isinstance(prompt, str) and config.prompt_format == "template":
        return render({"prompt": prompt, "completion": answer}, config, tokenizer)
    return render({"messages": [*prompt_messages(prompt), {"role": "assistant", "content": answer}]}, config, tokenizer)


def preference_row(record: Record, config: CustomizationConfig, tokenizer: Any) -> dict[str, str]:
    """A TRL DPO row: the rendered prompt and both answers, each closed by the end-of-turn text."""
    chosen = render_with_answer(record["prompt"], record["chosen_response"], config, tokenizer)
    rejected = render_with_answer(record["prompt"], record["rejected_response"], config, tokenizer)
    return {
        "prompt": chosen.prompt,
        "chosen": chosen.target + chosen.end_text,
        "rejected": rejected.target + rejected.end_text,
    }


def reward_row(record: Record, config: CustomizationConfig, tokenizer: Any) -> dict[str, Any]:
    """A TRL GRPO row: the rendered prompt plus the record's answer columns (passed to rewards)."""
    if isinstance(record["prompt"], str) and config.prompt_format == "template":
        head, _, _ = config.prompt_template.partition("{completion}")
        prompt = head.format(prompt=record["prompt"])
    else:
        prompt = tokenizer.apply_chat_template(prompt_messages(record["prompt"]), tokenize=False, add_generation_prompt=True)
    columns = {key: value for key, value in record.items() if key != "prompt"}
    return {"prompt": prompt, **columns}

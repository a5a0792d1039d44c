"""Rendering of preference (DPO) and reward (GRPO) records with the training prompt.

A preference record is ``{"prompt": str | messages, "chosen_response": str, "rejected_response": str}``;
a reward record is ``{"prompt": str | messages, ...answer columns}``. The prompt is rendered exactly
as SFT and evaluation render it (``data.prompts.render``), so every method sees the same prompt.
"""

from __future__ import annotations

import json
from typing import Any

from core.catalog import CustomizationConfig
from data.formats import ANSWER_FIELDS, Record
from data.prompts import Rendered, render


def prompt_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A preference or reward prompt as a conversation (text becomes one user turn)."""
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


def reward_columns(record: Record) -> dict[str, Any]:
    """The columns of a reward record that rewards receive: all but the prompt, the answer columns
    in one shape whatever each record wrote (a dataset column holds one type across records):
    ``answer``, ``solution`` and ``ground_truth`` as text (a number as its JSON text), ``label`` as
    the index of the right choice. Other columns are passed as they are.

    >>> reward_columns({"prompt": "2+2?", "answer": 4, "choices": ["3", "4"], "label": "4", "id": 7})
    {'answer': '4', 'choices': ['3', '4'], 'label': 1, 'id': 7}
    """
    columns = {key: value for key, value in record.items() if key != "prompt"}
    for field in ANSWER_FIELDS:
        if field in columns and not isinstance(columns[field], str):
            columns[field] = json.dumps(columns[field])
    label, choices = columns.get("label"), columns.get("choices")
    if isinstance(label, str) and isinstance(choices, list) and label in choices:
        columns["label"] = choices.index(label)
    return columns


def reward_row(record: Record, config: CustomizationConfig, tokenizer: Any) -> dict[str, Any]:
    """A TRL GRPO row: the rendered prompt plus the record's answer columns (``reward_columns``),
    which TRL passes to the rewards."""
    if isinstance(record["prompt"], str) and config.prompt_format == "template":
        head, _, _ = config.prompt_template.partition("{completion}")
        prompt = head.format(prompt=record["prompt"])
    else:
        prompt = tokenizer.apply_chat_template(prompt_messages(record["prompt"]), tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, **reward_columns(record)}

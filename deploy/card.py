"""The model card published with each version: ``README.md`` with the Hub's YAML front matter
(``base_model``, ``library_name``, ``tags``) and the version's lineage in the body.

It replaces the card PEFT's ``save_pretrained`` writes (which names the base by whatever path it
was loaded from and carries no lineage). The card is built from the registry's record of the
version only, with no timestamps, so publishing the same version again writes the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

CARD = "README.md"


class CardFacts(BaseModel):
    """What the card says about one published version."""

    output_model: str
    version: str
    base_model: str  # the Hub id (or the catalog name where the config has none)
    catalog_name: str
    artifact: str  # adapter | model
    finetuning_type: str
    training_type: str
    job_id: str
    dataset_sha256: str
    config: str
    run_id: str
    registered_model: str
    decision: str
    task_metric: str
    task_score: float | None


def _yaml_string(value: str) -> str:
    """A YAML scalar that reads back as ``value`` (JSON strings are valid YAML)."""
    return json.dumps(value)


def render_card(facts: CardFacts) -> str:
    """The card's text.

    >>> text = render_card(CardFacts(output_model="team/bot", version="3", base_model="org/base", catalog_name="org/base",
    ...     artifact="adapter", finetuning_type="lora", training_type="sft", job_id="cust-1", dataset_sha256="ab",
    ...     config="org/base@v1", run_id="r1", registered_model="team.bot", decision="promote", task_metric="em",
    ...     task_score=0.5))
    >>> text.splitlines()[:3]
    ['---', 'base_model: "org/base"', 'library_name: peft']
    """
    library = "peft" if facts.artifact == "adapter" else "transformers"
    tags = [facts.finetuning_type, facts.training_type, "customizer"] + (["lora"] if facts.finetuning_type != "lora" and facts.artifact == "adapter" else [])
    score = "not measured" if facts.task_score is None else f"{facts.task_score:.4g}"
    front = [
        "---",
        f"base_model: {_yaml_string(facts.base_model)}",
        f"library_name: {library}",
        "tags:",
        *[f"- {_yaml_string(t)}" for t in dict.fromkeys(tags)],
        "---",
    ]
    loading = (
        "```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(\"<this folder or repo>\")\n```"
        if library == "peft" else
        "```python\nfrom transformers import AutoModelForCausalLM\n\n"
        "model = AutoModelForCausalLM.from_pretrained(\"<this folder or repo>\")\n```"
    )
    body = [
        f"# {facts.output_model} (version {facts.version})",
        "",
        f"A {facts.finetuning_type} {facts.training_type} fine-tune of `{facts.base_model}` "
        f"(catalog name `{facts.catalog_name}`), trained and published by customizer.",
        "",
        "## Lineage",
        "",
        f"- Job: `{facts.job_id}`",
        f"- Dataset sha256: `{facts.dataset_sha256}`",
        f"- Config: `{facts.config}`",
        f"- MLflow run: `{facts.run_id}`",
        f"- Registered model: `{facts.registered_model}` version `{facts.version}`",
        f"- Gate decision: `{facts.decision}`",
        f"- Task score ({facts.task_metric or 'task metric'}): {score}",
        "",
        "## Loading",
        "",
        loading,
        "",
    ]
    return "\n".join(front + [""] + body)


def write_card(folder: Path, facts: CardFacts) -> str:
    """Write the card into ``folder`` (replacing any other README there); returns its file name."""
    (folder / CARD).write_text(render_card(facts), encoding="utf-8")
    return CARD

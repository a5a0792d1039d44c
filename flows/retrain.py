"""The ``retrain`` flow: for each registered output model, retrain its champion's job when the
champion's dataset changed; the new version is promoted only if it beats the champion."""

from __future__ import annotations

from prefect import flow

from flows.customize import customize
from tasks.retrain import RetrainOutcome, dataset_now, discard, find_champions, other_retrain, outcome, retrain_spec


@flow(name="retrain")
def retrain(output_models: list[str] | None = None) -> list[RetrainOutcome]:
    """Retrain the given output models (default: every registered one) whose champion's dataset
    changed since it was trained; unchanged ones are left alone."""
    champions, outcomes = find_champions(output_models)  # models without a champion are skipped
    for champion in champions:
        # A retrain still going (a slow one, or one waiting for approval) keeps the model to itself.
        if busy := other_retrain(champion.output_model):
            outcomes.append(RetrainOutcome(output_model=champion.output_model, action="skipped", reason=busy,
                                           champion_version=champion.version))
            continue
        now = dataset_now(champion)  # a fresh snapshot of where the data came from, and its sha256
        if now.sha256 == champion.dataset_sha256:
            discard(now)
            outcomes.append(outcome(champion, now.sha256))
            continue
        # The champion's job again, on the snapshot: the gate compares the result with the champion too.
        result = customize(retrain_spec(champion, now))
        outcomes.append(outcome(champion, now.sha256, result))
    return outcomes

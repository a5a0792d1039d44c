"""The ``retrain`` flow: for each registered output model, retrain its champion's job when the
champion's dataset changed; the new version is promoted only if it beats the champion."""

from __future__ import annotations

from prefect import flow

from flows.customize import customize
from core.specs import Submission
from tasks.check import check_retrain
from tasks.job import cancelled_before_start
from tasks.retrain import (
    RetrainOutcome, dataset_now, discard, find_champions, not_resubmittable, other_retrain, outcome, retrain_spec,
)


@flow(name="retrain")
def retrain(output_models: list[str] | None = None, submission: Submission | None = None) -> list[RetrainOutcome]:
    """Retrain the given output models (default: every registered one) whose champion's dataset
    changed since it was trained; unchanged ones are left alone."""
    if cancelled := cancelled_before_start():  # a retrain cancelled before it started stays cancelled
        return cancelled
    namespaces = check_retrain(output_models, submission)  # the schedule's run, or a signed one: whose models it may retrain
    champions, outcomes = find_champions(output_models)  # models without a champion are skipped
    for champion in champions:
        # A retrain still going (a slow one, or one waiting for approval) keeps the model to itself; a champion
        # is retrained only for its own job's submitter, in a namespace this retrain may use.
        if busy := other_retrain(champion.output_model) or not_resubmittable(champion, namespaces):
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

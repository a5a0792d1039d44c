"""Replay (``data.replay``) through the customize flow: the base model's own answers are mixed into
training, counted in the ingest report and carried in the lineage of the run and the model version;
a preference job with replay is refused naming the setting."""

import json
from pathlib import Path

import pytest

from core.settings import get_settings
from core import tracking
from deploy.registry import registered_name
from tests.conftest import TINY_CONFIG_URN
from data.ingest import read_examples
from core.specs import CustomizationSpec, PromotionPolicy
from evaluation.policy import write_policy

OUTPUT = "team/replay-bot"


def _spec(dataset: Path, **hyperparameters) -> CustomizationSpec:
    # The tiny model's general scores are noise: the operator opens the forgetting limit (a job may only tighten it).
    write_policy(get_settings(), None, PromotionPolicy(max_general_drop=100.0))
    return CustomizationSpec.model_validate(
        {
            "config": TINY_CONFIG_URN,
            "dataset": str(dataset),
            "output_model": OUTPUT,
            "hyperparameters": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "lora": {"adapter_dim": 8, "alpha": 16}} | hyperparameters,
            "data": {"replay": {"ratio": 0.5}},
            "evaluation": {"general_benchmarks": ["capitals"], "limit": 4, "max_new_tokens": 4, "few_shot": 0},
        }
    )


def test_self_rehearsal_is_trained_on_reported_and_in_the_lineage(services, ok_dataset, tmp_path):
    from flows.customize import customize

    result = customize(_spec(ok_dataset))
    settings = get_settings()
    client = tracking.client(settings)
    run = client.get_run(result.mlflow_run_id)
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "ingest/report.json", str(tmp_path))).read_text())

    # 18 training examples (2 held out): 9 replay examples, in training only; the dataset's digest is the user's data.
    replay = report["replay"]
    assert replay["source"] == "self" and replay["examples"] == 9 and replay["generation"]["generated"] == 9
    assert report["sha256"] == result.dataset_sha256 and report["splits"]["training"]["examples"] == 18
    job_data = Path(next(settings.jobs_dir.glob("cust-*"))) / "data"
    training = read_examples(job_data / "training.jsonl")
    assert len(training) == 27 and sum(e.loc.startswith("replay/self:") for e in training) == 9
    assert not any(e.loc.startswith("replay/") for e in read_examples(job_data / "validation.jsonl") + read_examples(job_data / "testing.jsonl"))

    tags = run.data.tags
    assert tags["customizer.replay.source"] == "self" and tags["customizer.replay.examples"] == "9"
    assert tags["customizer.replay.sha256"] == replay["sha256"] != result.dataset_sha256
    version = client.get_model_version(registered_name(OUTPUT), result.registered.version).tags
    assert version["customizer.replay.sha256"] == replay["sha256"] and version["customizer.replay.examples"] == "9"
    assert version["customizer.replay.source"] == "self" and version["customizer.dataset.sha256"] == result.dataset_sha256


def test_a_dpo_job_with_replay_is_refused_naming_the_setting(services, tmp_path):
    from flows.customize import customize

    with pytest.raises(Exception, match=r"`data.replay` \(ratio 0.5\).*training_type dpo"):
        customize(_spec(tmp_path / "unused", training_type="dpo"))


def test_the_ingest_flow_checks_a_replay_folder(services, ok_dataset, tmp_path):
    from flows.ingest import ingest
    from tests.conftest import write_jsonl
    from core.specs import DataOptions

    general = tmp_path / "general"
    write_jsonl(general / "g.jsonl", [{"prompt": f"General question {i}?", "completion": "An answer."} for i in range(5)])
    report = ingest(str(ok_dataset), config=TINY_CONFIG_URN, data=DataOptions(replay={"ratio": 0.25, "source": str(general)}))
    assert report.replay.examples == 4 and report.replay.requested == 4 and report.replay.source == str(general)
    write_jsonl(general / "g.jsonl", ['{"prompt": "q"}'])
    with pytest.raises(Exception, match=r"general/g.jsonl:1: `prompt` alone is not an example"):
        ingest(str(ok_dataset), data=DataOptions(replay={"ratio": 0.25, "source": str(general)}))

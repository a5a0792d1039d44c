"""The pre-flight every front door runs (``tasks.check``): the plain ``check`` on the tiny model
and 10-row datasets, its refusals by reason, and the flow's ``check`` task through ``.fn()`` with
the tasks that reuse what it measured."""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from core import tracking
from core.ids import prefixed_id
from core.settings import get_settings
from core.specs import CustomizationSpec, PromotionPolicy
from evaluation.policy import PolicyError, policy_file, write_policy
from tasks.check import CheckedJob, JobRefused, check, check_job, job_folder
from tasks.data import ingest
from tasks.job import mark_failed, open_job
from tasks.training import plan_training
from tests.conftest import TINY_CONFIG_URN, ok_rows, write_jsonl

LONG = {"prompt": "word " * 300, "completion": "ok"}
PAIRS = [{"prompt": f"Say ok. {i}", "chosen_response": "ok", "rejected_response": "no"} for i in range(10)]


def spec(dataset: Path, **fields) -> CustomizationSpec:
    return CustomizationSpec.model_validate({"config": TINY_CONFIG_URN, "dataset": str(dataset), "output_model": "team/bot"} | fields)


@pytest.fixture
def settings(job_settings, tiny_config_dir, tmp_path_factory, monkeypatch):
    """The module's data folder, with the tiny model's config in the catalog; the tests' folders are the allowed ones."""
    monkeypatch.setenv("CUSTOMIZER_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
    return get_settings()


def dataset(tmp_path: Path, rows: list) -> Path:
    write_jsonl(tmp_path / "ds" / "training" / "t.jsonl", rows)
    return tmp_path / "ds"


def test_check_measures_a_job_once_for_every_later_stage(settings, tmp_path):
    job = spec(dataset(tmp_path, ok_rows(10)), hyperparameters={"learning_rate": 2e-3})

    checked = check(job, settings, tmp_path / "out")

    assert (checked.config.urn, checked.option.training_type, checked.option.finetuning_type) == (TINY_CONFIG_URN, "sft", "lora")
    assert checked.policy_source == "built-in default" and checked.base is not None
    assert checked.dataset.counts["training"] == checked.train_examples == 9  # one of ten held out for validation
    assert checked.dataset.formats["training"] == "completion" and checked.data_dir == str(tmp_path / "out")
    assert (tmp_path / "out" / "report.json").is_file()
    # Token counts come from ingest's length check, and the estimate is made from them.
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    mean = report["lengths"]["splits"]["training"]["mean"]
    assert checked.tokens_per_epoch == round(mean * 9) > 0
    assert checked.estimate.tokens_per_epoch == checked.tokens_per_epoch and checked.estimate.train_examples == 9
    assert [w.message for w in checked.warnings] == ["learning_rate 0.002 is high for LoRA"]


def test_replay_examples_count_toward_the_training_size(settings, tmp_path):
    checked = check(spec(dataset(tmp_path, ok_rows(10)), data={"replay": {"ratio": 0.5}}), settings, tmp_path / "out")
    assert checked.dataset.counts["training"] == 9 and checked.train_examples == 9 + 4  # round(0.5 x 9)


@pytest.fixture
def operator(settings, tmp_path):
    """Settings whose policy folder is the test's own, with the operator's policy for namespace
    ``strict``: a forgetting limit of 0.5 points, LoRA reviewed too."""
    own = settings.model_copy(update={"policy_dir": tmp_path / "policies"})
    write_policy(own, "strict", PromotionPolicy(max_general_drop=0.5, review_methods=["all_weights", "dpo", "grpo", "lora"]))
    return own


def test_a_job_that_loosens_its_namespaces_policy_is_refused_before_any_work(operator, tmp_path):
    loose = spec(dataset(tmp_path, ok_rows(10)), output_model="strict/bot", policy={"max_general_drop": 9.0, "review_methods": []})

    with pytest.raises(JobRefused) as refused:
        check(loose, operator, tmp_path / "out")

    path = policy_file(operator, "strict")
    assert refused.value.reason == "policy"
    assert str(refused.value) == (
        f"`policy.max_general_drop`: 9.0 loosens the bound 0.5 set by {path} (ask for 0.5 or less); "
        f'`policy.review_methods`: [] loosens the bound ["all_weights", "dpo", "grpo", "lora"] set by {path} '
        '(keep ["all_weights", "dpo", "grpo", "lora"]; you may add methods); a job may only tighten its policy'
    )
    assert not (tmp_path / "out").exists()  # refused before ingest wrote anything
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (copy.reason, str(copy)) == ("policy", str(refused.value))


def test_a_job_that_tightens_its_namespaces_policy_runs_with_the_tighter_values(operator, tmp_path):
    tight = spec(dataset(tmp_path, ok_rows(10)), output_model="strict/bot", policy={"max_general_drop": 0.25, "min_task_gain": 1.0})

    checked = check(tight, operator, tmp_path / "out")

    assert (checked.policy.max_general_drop, checked.policy.min_task_gain) == (0.25, 1.0)
    assert checked.policy.review_methods == ["all_weights", "dpo", "grpo", "lora"]  # not stated by the job: the operator's
    assert checked.policy_source == f"built-in default < {policy_file(operator, 'strict')} < job"
    # The flow's check reads the spec after it travelled as JSON (every field at its value): the same policy.
    travelled = check(CustomizationSpec.model_validate_json(tight.model_dump_json()), operator, tmp_path / "out-2")
    assert (travelled.policy, travelled.policy_source) == (checked.policy, checked.policy_source)


def test_a_broken_global_policy_file_stops_every_job(operator, tmp_path):
    policy_file(operator, None).write_text("max_general_drop: [\n")
    with pytest.raises(PolicyError, match="_global.yaml: not valid YAML"):
        check(spec(dataset(tmp_path, ok_rows(10))), operator, tmp_path / "out")


def test_the_cli_refuses_a_spec_that_loosens_the_policy_without_training(operator, tmp_path, capsys, monkeypatch):
    from customizer.cli import main

    monkeypatch.setenv("CUSTOMIZER_POLICY_DIR", str(operator.policies_dir))
    file = tmp_path / "spec.yaml"
    file.write_text(yaml.safe_dump({"config": TINY_CONFIG_URN, "dataset": str(dataset(tmp_path, ok_rows(10))),
                                    "output_model": "strict/bot", "policy": {"max_general_drop": 100.0}}))
    for command in ("check", "run"):  # `run` checks first: nothing is trained
        assert main([command, str(file)]) == 3  # invalid data
        err = capsys.readouterr().err
        assert (f"customizer: error: `policy.max_general_drop`: 100.0 loosens the bound 0.5 set by {policy_file(operator, 'strict')} "
                "(ask for 0.5 or less); a job may only tighten its policy") in err
        assert "Traceback" not in err


def test_a_dpo_job_on_sft_records_does_not_fit(settings, tmp_path):
    with pytest.raises(JobRefused) as refused:
        check(spec(dataset(tmp_path, ok_rows(10)), hyperparameters={"training_type": "dpo"}), settings, tmp_path / "out")
    assert refused.value.reason == "fit"
    assert "training/ holds completion records; training_type dpo reads preference records" in str(refused.value)


def test_a_dpo_job_on_preference_pairs_counts_both_sequences(settings, tmp_path):
    checked = check(spec(dataset(tmp_path, PAIRS), hyperparameters={"training_type": "dpo"}), settings, tmp_path / "out")
    longer = json.loads((tmp_path / "out" / "report.json").read_text())["lengths"]["splits"]["training"]["mean"]
    assert checked.tokens_per_epoch == round(longer * 9 * 2)


def test_examples_over_max_seq_length_do_not_fit_under_the_error_policy(settings, tmp_path):
    root = dataset(tmp_path, ok_rows(9) + [LONG])
    with pytest.raises(JobRefused) as refused:
        check(spec(root), settings, tmp_path / "out")
    assert refused.value.reason == "fit"
    assert "training/t.jsonl:10: " in str(refused.value) and "longer than the config's max_seq_length 128" in str(refused.value)

    dropped = check(spec(root, data={"long_examples": "drop"}), settings, tmp_path / "out-drop")
    assert dropped.dataset.dropped == {"training": 1}


@pytest.mark.parametrize(
    ("fields", "rows", "reason", "words"),
    [
        ({"config": "nope/none@v1"}, ok_rows(10), "config", "not in the catalog"),
        ({"config": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "hyperparameters": {"training_type": "grpo", "finetuning_type": "all_weights"}},
         ok_rows(10), "method", "does not allow training_type='grpo'"),
        ({"config": "huggingfacetb/smollm2-135m-instruct@v1.0.0+cpu", "evaluation": {"target_score": 90},
          "hyperparameters": {"training_type": "grpo", "ladder": [{"finetuning_type": "lora"}, {"finetuning_type": "all_weights"}]}},
         ok_rows(10), "method", "`hyperparameters.ladder[1]` (grpo/all_weights)"),
        ({}, ok_rows(3) + ['{"prompt": 1, "completion": "x"}'], "dataset", "training/t.jsonl:4: `prompt` must be a string, got number"),
    ],
)
def test_other_refusals_name_their_reason(settings, tmp_path, fields, rows, reason, words):
    with pytest.raises(JobRefused) as refused:
        check(spec(dataset(tmp_path, rows), **fields), settings, tmp_path / "out")
    assert refused.value.reason == reason and words in str(refused.value)
    copy = pickle.loads(pickle.dumps(refused.value))  # crosses process boundaries with the orchestrator
    assert (copy.reason, str(copy)) == (reason, str(refused.value))


def test_a_model_that_is_not_here_waits_for_the_job_where_the_caller_allows_it(settings, tmp_path):
    job = spec(dataset(tmp_path, ok_rows(10)), config="meta/llama-3.2-1b-instruct@v1.0.0+A100")

    checked = check(job, settings, tmp_path / "out", model="if_available")

    assert checked.base is None and checked.tokens_per_epoch is None and checked.estimate is None
    assert checked.dataset.counts["training"] == 9  # the lines and the method are checked all the same
    assert "base model meta/llama-3.2-1b-instruct is not available here" in checked.warnings[-1].message
    with pytest.raises(Exception, match="Hugging Face cache"):
        check(job, settings, tmp_path / "out")  # a job's own pre-flight needs the model


def test_the_flows_check_task_feeds_open_ingest_and_plan(settings, tmp_path):
    checked = check_job.fn(spec(dataset(tmp_path, ok_rows(10)), budget={"max_device_hours": 100.0}))
    assert isinstance(checked, CheckedJob) and Path(checked.data_dir).parent.parent == settings.jobs_dir

    job = open_job.fn(checked)
    tags = tracking.client(settings).get_run(job.run_id).data.tags
    assert (job.config, job.policy) == (checked.config, checked.policy)
    assert (tags["customizer.base_model"], tags["customizer.base_model.digest"]) == ("test/tiny-llama", checked.base.digest)

    data = ingest.fn(job, checked)  # records what the pre-flight ingested, without reading it again
    assert data == checked.dataset
    assert tags_of(settings, job)["customizer.dataset.sha256"] == checked.dataset.sha256
    artifacts = {a.path for a in tracking.client(settings).list_artifacts(job.run_id, "ingest")}
    assert artifacts == {"ingest/report.json", "ingest/report.html"}

    plan = plan_training.fn(job, checked)
    assert (plan.estimate, plan.warnings) == (checked.estimate, checked.warnings)


def test_a_job_its_check_refused_still_leaves_a_failed_run_with_the_report(settings, tmp_path, monkeypatch):
    from tasks import job as job_tasks

    monkeypatch.setattr(job_tasks, "notify", lambda settings, text, namespace=None: True)
    flow_run_id = uuid.uuid4()
    job_id, work_dir = job_folder(settings, flow_run_id)
    assert job_id == prefixed_id("cust", flow_run_id)
    refused = spec(dataset(tmp_path, ok_rows(9) + [LONG]))
    with pytest.raises(JobRefused):
        check(refused, settings, work_dir / "data")

    mark_failed(None, SimpleNamespace(id=flow_run_id, parameters={"spec": refused.model_dump(mode="json")}),
                SimpleNamespace(message="longer than the config's max_seq_length 128"))

    client = tracking.client(settings)
    (run,) = client.search_runs([client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
                                filter_string=f"tags.`customizer.job_id` = '{job_id}'")
    assert run.info.status == "FAILED" and "max_seq_length 128" in run.data.tags["customizer.failure"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "ingest")} == {"ingest/report.json", "ingest/report.html"}


def tags_of(settings, job) -> dict[str, str]:
    return tracking.client(settings).get_run(job.run_id).data.tags


# --- where a run came from (check_origin) ----------------------------------------------------------

def test_an_unsigned_job_with_authentication_on_is_not_admitted(settings, tmp_path):
    from core.submission import NotSubmitted
    from tasks.check import check_origin

    with pytest.raises(NotSubmitted, match="not submitted through the platform"):
        check_origin(spec(dataset(tmp_path, ok_rows(10))), settings.model_copy(update={"auth_required": True}))
    check_origin(spec(dataset(tmp_path, ok_rows(10))), settings)  # authentication off: within the allowed folders


def test_a_job_may_not_read_outside_the_allowed_folders_even_unsigned(settings, tmp_path):
    from tasks.check import AccessRefused, check_origin

    with pytest.raises(AccessRefused, match=r"`dataset` '/root' is refused: .* outside the folders the server may read"):
        check_origin(spec(Path("/root")), settings)
    with pytest.raises(AccessRefused, match=r"`data.replay.source` '/etc' is refused"):
        check_origin(spec(dataset(tmp_path, ok_rows(10)), data={"replay": {"ratio": 0.1, "source": "/etc"}}), settings)


def test_a_signed_job_stays_in_its_submitters_namespaces(settings, tmp_path):
    from core.submission import signed
    from tasks.check import AccessRefused, check_origin

    def as_team(job):
        return signed(job, settings, "alice", ["team"], ["submit"])

    folder = dataset(tmp_path, ok_rows(10))
    assert check_origin(as_team(spec(folder)), settings).principal == "alice"
    with pytest.raises(AccessRefused, match="`output_model` is in namespace 'team-b', which the submitter may not use"):
        check_origin(as_team(spec(folder, output_model="team-b/bot")), settings)
    with pytest.raises(AccessRefused, match="`dataset` 'hf://datasets/team-b/data' is refused: names Data Store namespace 'team-b'"):
        check_origin(as_team(spec(folder).model_copy(update={"dataset": "hf://datasets/team-b/data"})), settings)
    copy = settings.root / "api" / "dataset-snapshots" / "abc"  # the API's copy: the platform made it, its source is checked
    assert check_origin(as_team(spec(copy, dataset_source="hf://datasets/team/data")), settings) is not None
    with pytest.raises(AccessRefused, match="`dataset` .* holds the service's own state"):
        check_origin(spec(copy), settings)  # unsigned: nobody vouches for a folder of the service's own state
    operator = signed(spec(Path("/srv/own-data")), settings, "operator", ["*"], ["admin"], door="cli")
    assert check_origin(operator, settings).door == "cli"  # the CLI on the server: the operator's own files


def test_an_evaluation_is_checked_like_a_job(settings, tmp_path, monkeypatch):
    from core.submission import NotSubmitted, signed
    from evaluation.custom import EvaluationRequest, ModelSpec
    from tasks.check import AccessRefused, check_evaluation

    model = tmp_path / "model"
    model.mkdir()
    request = EvaluationRequest(config={"type": "capitals"}, model=ModelSpec(model_uri=model.as_uri()))
    assert check_evaluation.fn(request) is None  # authentication off, inside the allowed folders
    with pytest.raises(AccessRefused, match="`model.model_uri` 'file:///root' is refused"):
        check_evaluation.fn(request.model_copy(update={"model": ModelSpec(model_uri="file:///root")}))
    with pytest.raises(AccessRefused, match="`data_files.qa` '/etc/passwd' is refused"):
        check_evaluation.fn(request.model_copy(update={"data_files": {"qa": "/etc/passwd"}}))
    monkeypatch.setenv("CUSTOMIZER_AUTH_REQUIRED", "true")
    with pytest.raises(NotSubmitted, match="not submitted through the platform"):
        check_evaluation.fn(request)
    assert check_evaluation.fn(signed(request, settings, "alice", ["team"], ["submit"])).principal == "alice"

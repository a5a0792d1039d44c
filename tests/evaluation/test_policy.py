"""Promotion policies in layers (``evaluation.policy``): built-in defaults < the operator's global
and namespace files < the job's own policy, which may only tighten; provenance; bad files fail closed."""

from __future__ import annotations

import json

import pytest

from core.settings import Settings
from core.specs import CustomizationSpec, PromotionPolicy
from evaluation.policy import (
    BUILT_IN, GLOBAL, PolicyError, PolicyLoosened, effective_policy, job_fields, operator_policy, policy_file, policy_text,
    read_policy_file, restore_policy, write_policy,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def job(policy: dict | None = None, namespace: str = "team-a", **fields) -> CustomizationSpec:
    return CustomizationSpec.model_validate(
        {"config": "customizer/tiny-llama@v1.0.0+cpu", "dataset": "/data/ds", "output_model": f"{namespace}/bot"}
        | ({"policy": policy} if policy is not None else {}) | fields
    )


def operator(settings: Settings, namespace: str | None, text: str) -> str:
    """Write an operator's policy file by hand; returns its path."""
    path = policy_file(settings, namespace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def refusal(settings: Settings, spec: CustomizationSpec) -> str:
    with pytest.raises(PolicyLoosened) as refused:
        effective_policy(spec, settings)
    return str(refused.value)


# ---------------------------------------------------------------- layers and provenance


def test_without_files_or_a_job_policy_the_built_in_defaults_govern(settings):
    policy, source = effective_policy(job(), settings)
    assert policy == PromotionPolicy() and source == BUILT_IN
    assert policy.model_fields_set == set(PromotionPolicy.model_fields)  # recorded with every field


def test_the_namespace_file_applies_over_the_global_one_field_by_field(settings):
    glob = operator(settings, None, "max_general_drop: 1.0\nmin_task_gain: 2.0\n")
    team = operator(settings, "team-a", "max_general_drop: 0.5\ndiverging_curves: reject\n")
    operator(settings, "team-b", "max_general_drop: 9.0\n")

    layers = operator_policy(settings, "team-a")
    assert (layers.policy.max_general_drop, layers.policy.min_task_gain, layers.policy.diverging_curves) == (0.5, 2.0, "reject")
    assert layers.policy.review_methods == PromotionPolicy().review_methods
    assert layers.sources["max_general_drop"] == team and layers.sources["min_task_gain"] == glob
    assert layers.sources["review_methods"] == BUILT_IN and layers.layers == [BUILT_IN, glob, team]
    assert glob.endswith(f"{GLOBAL}.yaml")

    policy, source = effective_policy(job(), settings)
    assert (policy.max_general_drop, policy.min_task_gain) == (0.5, 2.0)
    assert source == f"{BUILT_IN} < {glob} < {team}"
    # Another namespace gets the global layer and its own, never team-a's.
    other, source = effective_policy(job(namespace="team-b"), settings)
    assert (other.max_general_drop, other.min_task_gain, other.diverging_curves) == (9.0, 2.0, "hold")
    assert effective_policy(job(namespace="team-c"), settings)[1] == f"{BUILT_IN} < {glob}"


def test_an_operator_may_loosen_the_built_in_defaults_and_a_job_tightens_within_that(settings):
    team = operator(settings, "team-a", "max_general_drop: 100.0\nreview_methods: []\n")

    policy, source = effective_policy(job({"max_general_drop": 25.0, "min_task_gain": 1.0}), settings)

    assert (policy.max_general_drop, policy.min_task_gain, policy.review_methods) == (25.0, 1.0, [])
    assert source == f"{BUILT_IN} < {team} < job"


def test_fields_the_job_did_not_state_take_the_operators_value(settings):
    operator(settings, None, "max_general_drop: 1.0\nreview_methods: [all_weights, dpo, grpo, lora]\n")
    # Only min_task_gain is the job's: the rest (and a spec that carries every field at its default,
    # as one that travelled as JSON does) takes the operator's values, not the defaults.
    stated = job({"min_task_gain": 3.0})
    travelled = CustomizationSpec.model_validate_json(stated.model_dump_json())
    assert job_fields(stated.policy) == job_fields(travelled.policy) == ["min_task_gain"]
    for spec in (stated, travelled):
        policy, _ = effective_policy(spec, settings)
        assert (policy.min_task_gain, policy.max_general_drop, policy.review_methods) == (3.0, 1.0, ["all_weights", "dpo", "grpo", "lora"])


# ---------------------------------------------------------------- every kind of tightening and loosening


TIGHTER = [
    ("min_task_gain", 1.0, 0.5),
    ("max_general_drop", 0.5, 1.0),
    ("max_benchmark_drop", 2.0, 3.0),
    ("max_bpb_increase", 1.0, 2.0),
    ("approval_timeout_hours", 12.0, 24.0),
    ("max_forgetting_kl", 0.1, 0.2),
    ("forgetting_alpha", 0.01, 0.02),
    ("review_methods", ["all_weights", "lora"], ["all_weights"]),
    ("diverging_curves", "reject", "ignore"),
    ("benchmarks", ["capitals", "everyday"], ["capitals"]),
]
LOOSER = [
    ("min_task_gain", 0.5, 1.0, "ask for 1.0 or more"),
    ("max_general_drop", 1.5, 1.0, "ask for 1.0 or less"),
    ("max_benchmark_drop", 4.0, 3.0, "ask for 3.0 or less"),
    ("max_bpb_increase", 3.0, 2.0, "ask for 2.0 or less"),
    ("approval_timeout_hours", 48.0, 24.0, "ask for 24.0 or less"),
    ("max_forgetting_kl", 0.3, 0.2, "ask for 0.2 or less"),
    ("forgetting_alpha", 0.1, 0.02, "ask for 0.02 or less"),
    ("review_methods", ["lora"], ["all_weights"], 'keep ["all_weights"]; you may add methods'),
    ("diverging_curves", "ignore", "hold", 'ask for one of ["hold", "reject"]'),
    ("benchmarks", ["everyday"], ["capitals"], 'keep ["capitals"]; you may add benchmarks'),
]


def test_every_policy_field_has_a_rule_for_which_way_is_stricter():
    assert {f for f, *_ in TIGHTER} == {f for f, *_ in LOOSER} == set(PromotionPolicy.model_fields)


@pytest.mark.parametrize(("field", "asked", "bound"), TIGHTER + [(f, b, b) for f, _, b in TIGHTER])
def test_a_job_may_tighten_or_match_every_field(settings, field, asked, bound):
    operator(settings, "team-a", json.dumps({field: bound}))
    policy, source = effective_policy(job({field: asked}), settings)
    assert getattr(policy, field) == asked and source.endswith(" < job")


@pytest.mark.parametrize(("field", "asked", "bound", "hint"), LOOSER)
def test_a_job_that_loosens_a_field_is_refused_naming_field_value_bound_and_file(settings, field, asked, bound, hint):
    path = operator(settings, "team-a", json.dumps({field: bound}))
    message = refusal(settings, job({field: asked}))
    assert message == (f"`policy.{field}`: {json.dumps(asked)} loosens the bound {json.dumps(bound)} set by {path} ({hint}); "
                       "a job may only tighten its policy")


def test_the_built_in_defaults_are_the_floor_without_any_file(settings):
    message = refusal(settings, job({"max_general_drop": 100.0, "review_methods": [], "diverging_curves": "ignore"}))
    assert "`policy.max_general_drop`: 100.0 loosens the bound 2.0 set by built-in default (ask for 2.0 or less)" in message
    assert '`policy.review_methods`: [] loosens the bound ["all_weights", "dpo", "grpo"] set by built-in default' in message
    assert '`policy.diverging_curves`: "ignore" loosens the bound "hold" set by built-in default' in message
    assert message.endswith("; a job may only tighten its policy")


def test_the_benchmark_limit_bound_is_three_times_the_forgetting_limit_when_unset(settings):
    operator(settings, None, "max_general_drop: 1.0\n")
    assert effective_policy(job({"max_benchmark_drop": 3.0}), settings)[0].max_benchmark_drop == 3.0
    message = refusal(settings, job({"max_benchmark_drop": 3.5}))
    assert "`policy.max_benchmark_drop`: 3.5 loosens the bound 3.0 (3 x max_general_drop) set by built-in default" in message


def test_no_operator_kl_limit_lets_a_job_set_one_and_a_set_limit_cannot_be_lifted(settings):
    assert effective_policy(job({"max_forgetting_kl": 5.0}), settings)[0].max_forgetting_kl == 5.0
    operator(settings, "team-a", "max_forgetting_kl: 0.5\n")
    # null is the default: it states nothing, so the operator's limit stands.
    assert effective_policy(job({"max_forgetting_kl": None}), settings)[0].max_forgetting_kl == 0.5


def test_a_job_counting_fewer_than_every_scored_benchmark_loosens_the_default(settings):
    scored = {"evaluation": {"general_benchmarks": ["capitals", "everyday"]}}
    counted, _ = effective_policy(job({"benchmarks": ["everyday", "capitals", "extra"]}, **scored), settings)
    assert counted.benchmarks == ["everyday", "capitals", "extra"]
    message = refusal(settings, job({"benchmarks": ["capitals"]}, **scored))
    assert ('`policy.benchmarks`: ["capitals"] loosens the bound null (every scored benchmark: ["capitals", "everyday"]) '
            'set by built-in default (keep ["everyday"]; you may add benchmarks)') in message


def test_the_global_file_is_named_as_the_bound_when_it_set_it(settings):
    glob = operator(settings, None, "min_task_gain: 2.0\n")
    operator(settings, "team-a", "max_general_drop: 1.0\n")
    message = refusal(settings, job({"min_task_gain": 1.0, "max_general_drop": 1.5}))
    assert f"`policy.min_task_gain`: 1.0 loosens the bound 2.0 set by {glob}" in message
    assert f"`policy.max_general_drop`: 1.5 loosens the bound 1.0 set by {policy_file(settings, 'team-a')}" in message


# ---------------------------------------------------------------- files


@pytest.mark.parametrize(("text", "words"), [
    ("max_general_drop: [1, 2\n", "not valid YAML"),
    ("max_general_drop: -1\n", "invalid policy: max_general_drop: Input should be greater than or equal to 0"),
    ("max_general_dorp: 1\n", "invalid policy: max_general_dorp: Extra inputs are not permitted"),
    ("- 1\n", "invalid policy: <root>: Input should be a valid dictionary"),
    (b"\xff\xfe", "cannot be read"),
])
@pytest.mark.parametrize("namespace", [None, "team-a"])
def test_a_policy_file_that_cannot_be_read_fails_closed(settings, text, words, namespace):
    path = policy_file(settings, namespace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(PolicyError) as broken:
        effective_policy(job(), settings)
    assert str(broken.value).startswith(f"{path}: ") and words in str(broken.value)


def test_a_file_that_is_a_folder_fails_closed(settings):
    policy_file(settings, None).mkdir(parents=True)
    with pytest.raises(PolicyError, match="cannot be read"):
        operator_policy(settings, "team-a")


@pytest.mark.parametrize("namespace", ["../etc", "_global", "Team", "", "a/b"])
def test_only_a_namespace_has_a_policy_file(settings, namespace):
    with pytest.raises(PolicyError, match="is not a namespace"):
        policy_file(settings, namespace)


def test_written_files_state_only_their_fields_and_replace_atomically(settings):
    write_policy(settings, "team-a", PromotionPolicy(max_general_drop=1.0))
    path = policy_file(settings, "team-a")
    assert path.read_text() == "max_general_drop: 1.0\n"
    assert read_policy_file(path).model_fields_set == {"max_general_drop"}
    text = policy_text(settings, "team-a")
    write_policy(settings, "team-a", PromotionPolicy(review_methods=["lora"]))
    assert read_policy_file(path) == PromotionPolicy(review_methods=["lora"])
    assert [p.name for p in path.parent.iterdir()] == ["team-a.yaml"]  # no temporary file left behind
    restore_policy(settings, "team-a", text)
    assert path.read_text() == text
    restore_policy(settings, "team-a", None)
    assert not path.exists() and policy_text(settings, "team-a") is None

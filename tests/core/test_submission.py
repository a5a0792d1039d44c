"""Who submitted a flow run (``core.submission``): the platform's signature covers the parameters and
the submitter, survives the trip through Prefect as JSON, and nothing else verifies."""

import pytest

from core import submission as sub
from core.settings import Settings
from core.specs import CustomizationSpec, Submission
from core.submission import NotSubmitted, admitted, namespaces_of, sign_parameters, signed, verified
from evaluation.custom import EvaluationRequest, ModelSpec

CONFIG = "customizer/tiny-llama@v1.0.0+cpu"


def _spec(**fields) -> CustomizationSpec:
    return CustomizationSpec.model_validate({"config": CONFIG, "dataset": "/data/ds", "output_model": "team-a/bot"} | fields)


def _as_prefect_passes_it(spec: CustomizationSpec) -> CustomizationSpec:
    return CustomizationSpec.model_validate(spec.model_dump(mode="json"))


def test_a_signed_spec_verifies_after_travelling_as_json(tmp_path):
    settings = Settings(data_dir=tmp_path)
    spec = signed(_spec(policy={"min_task_gain": 1.5}), settings, "alice", frozenset({"team-a"}), frozenset({"submit"}))
    found = verified(_as_prefect_passes_it(spec), settings)
    assert (found.principal, found.namespaces, found.roles, found.door) == ("alice", ["team-a"], ["submit"], "api")
    assert namespaces_of(found) == frozenset({"team-a"})
    # What a champion keeps for its retrain: the spec without its sealed secrets.
    stored = spec.model_copy(update={"secrets": {"wandb-api-key": "sealed"}})
    assert verified(CustomizationSpec.model_validate_json(stored.model_dump_json(exclude={"secrets"})), settings) == found


@pytest.mark.parametrize("change", [
    {"output_model": "team-b/bot"},
    {"dataset": "/root"},
    {"policy": {"review_methods": []}},
])
def test_any_change_to_a_signed_spec_breaks_its_signature(tmp_path, change):
    settings = Settings(data_dir=tmp_path)
    spec = signed(_spec(), settings, "alice", ["team-a"], ["submit"])
    edited = CustomizationSpec.model_validate(spec.model_dump(mode="json") | change)
    with pytest.raises(NotSubmitted, match=r"not submitted through the platform: the signature .* \(by alice\) does not match"):
        verified(edited, settings)


def test_a_wider_submitter_or_another_key_does_not_verify(tmp_path):
    settings = Settings(data_dir=tmp_path / "one")
    spec = signed(_spec(), settings, "alice", ["team-a"], ["submit"])
    wider = spec.model_copy(update={"submission": spec.submission.model_copy(update={"namespaces": ["*"]})})
    with pytest.raises(NotSubmitted):
        verified(wider, settings)
    with pytest.raises(NotSubmitted):
        verified(spec, Settings(data_dir=tmp_path / "other"))  # another platform's key
    forged = spec.model_copy(update={"submission": Submission(principal="alice", namespaces=["team-a"], signature="0" * 64)})
    with pytest.raises(NotSubmitted):
        verified(forged, settings)


def test_a_signature_is_for_one_flow_only(tmp_path):
    settings = Settings(data_dir=tmp_path)
    parameters = {"dataset": "/data/ds", "config": None, "data": None, "seed": 42}
    submission = sign_parameters(settings, "ingest", parameters, "op", None, ["admin"], door="cli")
    assert admitted(settings, "ingest", parameters, submission) == submission
    with pytest.raises(NotSubmitted):
        admitted(settings, "retrain", parameters, submission)
    with pytest.raises(NotSubmitted):
        admitted(settings, "ingest", parameters | {"dataset": "/root"}, submission)


def test_an_evaluation_request_is_signed_the_same_way(tmp_path):
    settings = Settings(data_dir=tmp_path)
    request = signed(EvaluationRequest(config={"type": "custom"}, model=ModelSpec(model_uri="file:///m")), settings, None, None, ["submit"])
    assert verified(EvaluationRequest.model_validate(request.model_dump(mode="json")), settings).namespaces == ["*"]
    moved = request.model_copy(update={"model": ModelSpec(model_uri="file:///elsewhere")})
    with pytest.raises(NotSubmitted):
        verified(moved, settings)


def test_without_a_submission_only_authentication_off_admits_the_run(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert verified(_spec(), settings) is None and namespaces_of(None) is None
    with pytest.raises(NotSubmitted, match="carries no submission signed by the platform, and authentication is on; submit it"):
        verified(_spec(), settings.model_copy(update={"auth_required": True}))


def test_module_doctests_pass():
    import doctest

    assert doctest.testmod(sub).failed == 0

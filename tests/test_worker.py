"""The worker serves the deployments prefect.yaml defines: one definition, read by both."""

from pathlib import Path

import pytest
import yaml

from core.settings import Settings
from customizer.worker import DEPLOYMENTS_FILE, DeploymentsError, read_deployments, runner_deployments

pytestmark = pytest.mark.unit


def test_the_worker_serves_what_prefect_yaml_defines(tmp_path):
    defined = yaml.safe_load(DEPLOYMENTS_FILE.read_text())["deployments"]
    served = {d.flow_name: d for d in runner_deployments(Settings(root=tmp_path))}
    assert sorted(served) == sorted(d["entrypoint"].rpartition(":")[2] for d in defined)
    for entry in defined:
        deployment = served[entry["entrypoint"].rpartition(":")[2]]
        assert deployment.name == entry["name"]
        assert deployment.tags == entry["tags"]
        assert deployment.description == " ".join(entry["description"].split())
        assert [s.schedule.cron for s in deployment.schedules] == [s["cron"] for s in entry.get("schedules") or []]
    retrain = served["retrain"]
    assert retrain.concurrency_limit == 1 and retrain.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert served["customize"].concurrency_limit is None


def test_settings_name_the_customize_and_evaluate_deployments(tmp_path):
    served = {d.flow_name: d.name for d in runner_deployments(Settings(root=tmp_path, customize_deployment="customize/gpu"))}
    assert served["customize"] == "gpu" and served["evaluate"] == "customizer"
    with pytest.raises(DeploymentsError, match="must be customize/<deployment name>"):
        runner_deployments(Settings(root=tmp_path, customize_deployment="train/gpu"))


def test_a_broken_deployments_file_is_named(tmp_path):
    with pytest.raises(DeploymentsError, match="cannot read the deployments"):
        read_deployments(tmp_path / "missing.yaml")
    broken = tmp_path / "prefect.yaml"
    broken.write_text("deployments:\n  - name: x\n")
    with pytest.raises(DeploymentsError, match=r"prefect.yaml: deployment 1 needs a `name` and an `entrypoint`"):
        read_deployments(broken)
    assert isinstance(DEPLOYMENTS_FILE, Path)

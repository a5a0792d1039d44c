"""The Kubernetes work-pool templates and manifests, rendered the way Prefect renders them and validated
offline against the Kubernetes API schemas (``kubernetes-validate``) of a pinned Kubernetes version.

The multi-node template's Job uses ``successPolicy`` (GA in Kubernetes 1.33), hence the pin.
"""

import copy
import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prefect.utilities.templating import apply_values

from training.launch import NODE_REQUEST_ENV
from training.resources import RDZV_ENDPOINT_ENV

pytestmark = pytest.mark.unit

KUBERNETES_VERSION = "1.33.0"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MULTINODE = DEPLOY / "k8s-multinode-work-pool.json"
SINGLE = DEPLOY / "k8s-gpu-work-pool.json"
SERVICE = DEPLOY / "k8s" / "rendezvous-service.yaml"
FLOW_ENV = {"PREFECT_API_URL": "http://prefect:4200/api", "CUSTOMIZER_STORE_URI": "s3://models"}
FLOW_COMMAND = "prefect flow-run execute"


def render(template_path: Path, **values) -> dict:
    """The Job a Prefect Kubernetes worker submits for a flow run: the template's variables (defaults
    overridden by ``values``) applied, then what the worker adds (the flow run's env before the template's,
    the command split into args, labels), as ``prefect-kubernetes`` does."""
    template = json.loads(template_path.read_text())
    defaults = {name: spec["default"] for name, spec in template["variables"]["properties"].items() if "default" in spec}
    sample = {"name": "customize-brave-otter", "env": FLOW_ENV, "labels": {"prefect.io/flow-run-id": "0f3c"}, "command": FLOW_COMMAND}
    config = apply_values(template["job_configuration"], defaults | sample | values)
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    flow_env = [{"name": k, "value": v} for k, v in config["env"].items()]
    container["env"] = [*flow_env, *container["env"]] if isinstance(container.get("env"), list) else flow_env
    container["args"] = shlex.split(container["args"]) if isinstance(container.get("args"), str) else container.get("args")
    assert "{{" not in json.dumps(job), "a placeholder was left unfilled"
    return job


def service() -> dict:
    return yaml.safe_load(SERVICE.read_text())


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("template", [SINGLE, MULTINODE], ids=["one-pod", "multinode"])
def test_rendered_jobs_are_valid_kubernetes_objects(template):
    validate(render(template))


def test_the_rendezvous_service_is_a_valid_headless_service():
    manifest = service()
    validate(manifest)
    assert manifest["spec"]["clusterIP"] == "None" and manifest["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("breakage", [
    lambda job: job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1].pop("mountPath"),
    lambda job: job["spec"].update(completions="three"),
    lambda job: job["spec"]["template"]["spec"].update(subdomian="customizer-rendezvous"),
    lambda job: job["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "valueFrom": {"fieldRef": {}}}),
    lambda job: job["spec"]["successPolicy"]["rules"][0].update(succeededIndexes=0),
    lambda job: job["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="29400"),
], ids=["required-mount-path", "integer", "unknown-field", "required-field", "string", "port-type"])
def test_a_broken_manifest_fails_validation(breakage):
    job = copy.deepcopy(render(MULTINODE))
    breakage(job)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)


def test_a_variable_of_the_wrong_type_fails_validation():
    with pytest.raises(kubernetes_validate.ValidationError, match="'2' is not of type 'integer'"):
        validate(render(MULTINODE, nodes="2"))


def test_a_broken_service_fails_validation():
    manifest = service()
    manifest["spec"]["ports"][0]["port"] = "rendezvous"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(manifest)


def test_the_multinode_job_runs_one_pod_per_node_and_ends_with_pod_0():
    job = render(MULTINODE, nodes=4, gpus=8)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}  # the flow's pod decides; the others are ended
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
    resources = spec["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 8


def test_pod_0_is_reachable_at_the_rendezvous_endpoint_through_the_headless_service():
    job, svc = render(MULTINODE), service()
    pod = job["spec"]["template"]
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]  # <job>-<index>.<service> resolves to each pod
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    port = svc["spec"]["ports"][0]["port"]
    assert env[RDZV_ENDPOINT_ENV]["value"] == f"$(JOB_NAME)-0.{svc['metadata']['name']}:{port}"
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    assert pod["spec"]["containers"][0]["ports"][0]["containerPort"] == port
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.index("JOB_NAME") < names.index(RDZV_ENDPOINT_ENV)  # $(VAR) only expands variables defined before it


def test_every_pod_shares_the_data_folder_and_the_request_post():
    pod = render(MULTINODE, data_claim="team-data", data_mount_path="/shared")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert ("CUSTOMIZER_DATA_DIR", "/shared") == [item for item in env if item[0] == "CUSTOMIZER_DATA_DIR"][-1]  # the last one wins
    assert (NODE_REQUEST_ENV, "$(CUSTOMIZER_DATA_DIR)/nodes/$(JOB_NAME)/train-request.json") in env
    assert {"name": "data", "mountPath": "/shared"} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "team-data"}} in pod["volumes"]
    assert env[:len(FLOW_ENV)] == list(FLOW_ENV.items())  # the flow run's settings reach every pod


@pytest.mark.parametrize(("index", "expected"), [("0", FLOW_COMMAND), ("1", "-m training.launch --follow"), ("3", "-m training.launch --follow")])
def test_pod_0_runs_the_flow_and_the_other_pods_follow_its_training(tmp_path, index, expected):
    container = render(MULTINODE)["spec"]["template"]["spec"]["containers"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("prefect", "python"):  # stand-ins that say how they were called
        stub = bin_dir / program
        stub.write_text(f'#!/bin/sh\necho "{program} $*"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": index}
    done = subprocess.run([*container["command"], *container["args"]], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    program = "prefect" if index == "0" else "python"
    assert done.stdout.strip() == f"{program} {expected.removeprefix('prefect ')}"

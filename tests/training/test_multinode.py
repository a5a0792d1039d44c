"""Training across two nodes, each a ``torchrun`` on this machine, joined through a c10d rendezvous.

Node 0 is the engine's own path (``launch``, as in the first pod of the Kubernetes indexed Job);
node 1 is ``python -m training.launch --follow``, as in the Job's other pods. Both train the tiny
model with LoRA on the CPU (gloo) and the result has the format a single process delivers.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import SESSION_DIR
from tests.training.test_resilience import REPO, request_for
from core.settings import get_settings
from training.launch import NODE_REQUEST_ENV, launch, run, torchrun_command
from training.resources import RDZV_ENDPOINT_ENV, available_resources, check_resources


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_node_settings(tiny_model_dir: Path):
    """Settings whose catalog has the tiny model with a LoRA option on 2 nodes of one CPU process each."""
    folder = SESSION_DIR / "multinode-configs"
    folder.mkdir(exist_ok=True)
    (folder / "tiny-2nodes.yaml").write_text(
        "namespace: test\nname: tiny-2nodes@v1\n"
        f"target: {{name: test/tiny-llama, model_uri: {tiny_model_dir}}}\n"
        "max_seq_length: 128\nlora_target_modules: [q_proj, v_proj]\n"
        "training_options: [{training_type: sft, finetuning_type: lora, num_gpus: 0, num_nodes: 2, micro_batch_size: 2}]\n"
    )
    dirs = json.loads(os.environ["CUSTOMIZER_CONFIG_DIRS"])
    if str(folder) not in dirs:
        os.environ["CUSTOMIZER_CONFIG_DIRS"] = json.dumps([*dirs, str(folder)])
    return get_settings()


def test_the_command_is_the_same_on_every_node_and_meets_at_the_rendezvous(tmp_path, monkeypatch, settings, ok_dataset, tiny_model_dir):
    settings = two_node_settings(tiny_model_dir)
    monkeypatch.setenv(RDZV_ENDPOINT_ENV, "train-0.customizer-training:29400")
    request = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "job-7", urn="test/tiny-2nodes@v1")
    check_resources(request.config.option_for("sft", "lora"), available_resources())  # the worker accepts 2 nodes with an endpoint
    command = torchrun_command(request, tmp_path / "job-7" / "train-request.json")
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc_per_node=1", "--nnodes=2",
                           "--rdzv-endpoint=train-0.customizer-training:29400", "--rdzv-backend=c10d", "--rdzv-id=job-7",
                           "-m", "training.launch", str(tmp_path / "job-7" / "train-request.json")]
    single = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "one")
    assert "--standalone" in torchrun_command(single, tmp_path / "r.json") and "--nnodes=1" in torchrun_command(single, tmp_path / "r.json")


def test_follow_without_the_post_path_says_which_variable_is_missing(monkeypatch):
    monkeypatch.delenv(NODE_REQUEST_ENV, raising=False)
    done = subprocess.run([sys.executable, "-m", "training.launch", "--follow", "1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and NODE_REQUEST_ENV in done.stderr


def test_two_nodes_train_lora_through_the_rendezvous_and_deliver_the_single_node_adapter(tmp_path, monkeypatch, settings, ok_dataset, tiny_model_dir):
    settings = two_node_settings(tiny_model_dir)
    post = tmp_path / "nodes" / "train-request.json"
    monkeypatch.setenv(RDZV_ENDPOINT_ENV, f"127.0.0.1:{free_port()}")
    monkeypatch.setenv(NODE_REQUEST_ENV, str(post))
    follower_log = tmp_path / "node1.log"
    with open(follower_log, "wb") as out:  # node 1: waits for node 0's request, then joins it
        follower = subprocess.Popen([sys.executable, "-m", "training.launch", "--follow", "1"], cwd=REPO, env=os.environ.copy(),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        request = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "job", urn="test/tiny-2nodes@v1", epochs=1, batch_size=4)
        distributed = launch(request, settings)  # node 0: the engine's path
        assert follower.wait(timeout=60) == 0, follower_log.read_text()[-3000:]
        elapsed = time.monotonic() - started
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, 9)
            follower.wait()
    assert json.loads(post.read_text())["request"] == str(Path(request.work_dir) / "train-request.json")
    logs = (Path(request.work_dir) / "train-processes.log").read_text() + follower_log.read_text()
    assert "--nnodes=2" in logs and "--rdzv-backend=c10d" in logs
    assert "rank0" in logs and "rank1" in logs, "a process on each node should have trained"

    single = run(request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "single", epochs=1, batch_size=4), settings)
    assert distributed.steps == single.steps == 5  # the global batch of 4 is split over the 2 nodes
    two, one = Path(distributed.output_dir), Path(single.output_dir)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert {k: v.shape for k, v in load_file(two / "adapter_model.safetensors").items()} == \
           {k: v.shape for k, v in load_file(one / "adapter_model.safetensors").items()}
    assert json.loads((two / "adapter_config.json").read_text()) == json.loads((one / "adapter_config.json").read_text())
    assert elapsed < 120


def test_a_following_node_runs_each_posted_request_and_stops_at_a_failed_training(tmp_path, monkeypatch, settings, ok_dataset, tiny_model_dir):
    from training import launch as launcher

    settings = two_node_settings(tiny_model_dir)
    monkeypatch.setenv(RDZV_ENDPOINT_ENV, "127.0.0.1:1")
    post = tmp_path / "post.json"
    monkeypatch.setenv(NODE_REQUEST_ENV, str(post))
    request = request_for(tmp_path, settings, ok_dataset, tiny_model_dir, "job", urn="test/tiny-2nodes@v1")
    request_path = tmp_path / "train-request.json"
    request_path.write_text(request.model_dump_json())
    ran = tmp_path / "ran.txt"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); sys.exit(int(sys.argv[3]))"
    codes = iter(["0", "0", "3"])
    monkeypatch.setattr(launcher, "torchrun_command", lambda req, path: [sys.executable, "-c", script, str(ran), str(path), next(codes)])

    launcher._post_for_other_nodes(request_path)
    assert launcher.follow(post, runs=1, poll_s=0.01) == 0
    launcher._post_for_other_nodes(request_path)  # the same request launched again is a new post
    assert launcher.follow(post, runs=1, poll_s=0.01) == 0
    launcher._post_for_other_nodes(request_path)
    assert launcher.follow(post, runs=2, poll_s=0.01) == 3  # stops at the failed training, without waiting for a second
    assert ran.read_text().splitlines() == [str(request_path)] * 3

"""The free rungs through the customize flow: a base model that answers when the nearest training
example is in its prompt, and only then, is spared fine-tuning by retrieval-augmented few-shot; the
job names the rung, its prompt is in MLflow's prompt registry with the job's lineage, and the ladder's
rows are in its result, its summary and its status."""

import json
import shutil
from pathlib import Path

import pytest

from core import tags as tag
from core import tracking
from core.catalog import get_config
from core.settings import get_settings
from core.specs import CustomizationSpec, EvaluationPlan, PromotionPolicy
from data.ingest import ingest_dataset
from evaluation.policy import write_policy
from evaluation.rungs import PROMPT_RUN_ID, PROMPT_RUNG, RETRIEVAL_BENCHMARK, retrieval_benchmark
from evaluation.runner import few_shot_benchmark, task_benchmark
from api.status import training_metrics
from customizer.summary import render_summary
from evaluation.ladder import ladder_dicts
from tests.conftest import TINY_CONFIG_URN, add_config, write_jsonl

# Each testing item shares a rare word with exactly one training example, whose answer is its own;
# the first training example (the one plain few-shot shows) is nobody's neighbour.
WORDS = ["quokka", "zephyr", "marzipan", "obsidian", "kumquat", "tundra", "gazebo", "walrus", "saffron", "nebula"]
TRAIN = [{"prompt": "Say hello.", "completion": "hello"}] + [
    {"prompt": f"The {w} code?", "completion": f"c{i}"} for i, w in enumerate(WORDS)]
TEST = [{"prompt": f"Code for {w}?", "completion": f"c{i}"} for i, w in enumerate(WORDS)]
PLAN = {"general_benchmarks": ["capitals"], "limit": 16, "max_new_tokens": 6, "few_shot": 1, "retrieval_few_shot": True,
        "target_score": 70.0}


def coder_model(tiny_model_dir: Path, dataset: Path, folder: Path) -> Path:
    """The tiny model taught the benchmark prompts themselves: the item's answer when its nearest
    training example precedes it, "no" zero-shot or after an unrelated example."""
    # delayed: torch and transformers are heavy (start-up time)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = get_settings()
    config, tokenizer = get_config(TINY_CONFIG_URN, settings), AutoTokenizer.from_pretrained(tiny_model_dir)
    data = ingest_dataset(str(dataset), folder / "data", seed=0)
    plan = EvaluationPlan.model_validate(PLAN)
    task = task_benchmark(data, config, tokenizer, plan, folder / "bench")
    few_shot_benchmark(data, config, tokenizer, plan, task, folder / "bench")
    retrieval_benchmark(data, config, tokenizer, plan, task, folder / "bench")
    examples = []
    for name in ("task", "task_few_shot", RETRIEVAL_BENCHMARK):
        for line in (folder / "bench" / f"{name}.jsonl").read_text().splitlines():
            row = json.loads(line)
            answer = row["answer"] if name == RETRIEVAL_BENCHMARK else "no"
            prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            examples.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        for ids, labels in examples:
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
    out = folder / "coder"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.flow
def test_retrieval_few_shot_meets_the_target_and_the_job_keeps_its_prompt(services, tmp_path, tiny_model_dir, monkeypatch):
    from flows.customize import customize

    dataset = tmp_path / "coded"
    write_jsonl(dataset / "training" / "train.jsonl", TRAIN)
    write_jsonl(dataset / "validation" / "val.jsonl", TRAIN[1:3])
    write_jsonl(dataset / "testing" / "test.jsonl", TEST)
    coder = coder_model(tiny_model_dir, dataset, tmp_path / "teach")
    add_config(tmp_path / "configs", monkeypatch, "test/coder@v1", coder)
    write_policy(get_settings(), None, PromotionPolicy(max_general_drop=100.0))
    spec = CustomizationSpec.model_validate({"config": "test/coder@v1", "dataset": str(dataset), "output_model": "team/coder",
                                             "evaluation": PLAN})

    result = customize(spec)

    baseline = result.baseline
    assert baseline.task["exact_match"] < 0.7 and baseline.few_shot["exact_match"] < 0.7  # zero- and plain few-shot fall short
    assert [(r.kind, r.score) for r in baseline.rungs] == [("few-shot", baseline.few_shot["exact_match"]), ("retrieval", 1.0)]
    # The ladder's free rows: in the result, the summary and the job's status over the API.
    assert [(r.rung, r.cost, r.decision) for r in result.ladder] == [
        ("zero-shot", "free", "missed the target"), ("few-shot (k=1)", "free", "missed the target"),
        ("retrieval few-shot (BM25, k=1)", "free", "met the target")]
    zero, few, retrieval = result.ladder
    assert zero.score == pytest.approx(baseline.task["exact_match"]) and retrieval.score == 1.0 and 0.7 <= retrieval.ci_low < 1.0
    assert zero.prompt_tokens < few.prompt_tokens and zero.prompt_tokens < retrieval.prompt_tokens
    summary = render_summary(result, 1.0)
    assert "ladder (every rung tried, cheapest first; score and interval in points)" in summary
    assert any(line.split()[:5] == ["retrieval", "few-shot", "(BM25,", "k=1)", "100.0"] and line.endswith("met the target")
               for line in summary.splitlines())
    status, _ = training_metrics(get_settings(), result.job_id)
    assert status["ladder"] == ladder_dicts(result.ladder)
    assert result.outcome == "prompt_sufficient" and result.candidate is None and result.registered is None
    assert result.prompt_baseline.startswith("retrieval few-shot (BM25, k=1) reaches exact_match 100.0, lower bound ")
    assert result.prompt_baseline.endswith("prompt registered as team.coder-prompt version 1")
    assert not any(get_settings().jobs_dir.glob("*/checkpoints"))
    client = tracking.client(get_settings())
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["customizer.decision"] == "no fine-tuning needed"
    prompt = client.load_prompt("team.coder-prompt", version=1)
    assert (prompt.tags[tag.JOB_ID], prompt.tags[PROMPT_RUN_ID], prompt.tags[PROMPT_RUNG]) == (
        result.job_id, result.mlflow_run_id, "retrieval few-shot (BM25, k=1)")
    assert (prompt.tags[tag.DATASET_SHA256], prompt.tags[tag.BASE_MODEL]) == (result.dataset_sha256, "test/coder")
    retrieval = json.loads(prompt.tags["customizer.retrieval"])
    assert (retrieval["k"], retrieval["library"], retrieval["dataset_sha256"]) == (1, "bm25s==0.3.16", result.dataset_sha256)

    # Advice asked for before committing (evaluation.ladder_only), with a target no lower bound reaches:
    # the job scores the free rungs, shows them, registers nothing and trains nothing.
    advice = customize(spec.model_copy(update={"output_model": "team/coder-advice", "evaluation": EvaluationPlan.model_validate(
        PLAN | {"target_score": 100.0, "ladder_only": True})}))
    assert advice.outcome == "advice" and advice.candidate is None and advice.registered is None and advice.prompt_baseline is None
    assert [(r.rung, r.decision) for r in advice.ladder] == [
        ("zero-shot", "missed the target"), ("few-shot (k=1)", "missed the target"), ("retrieval few-shot (BM25, k=1)", "missed the target")]
    assert "ADVICE ONLY" in render_summary(advice, 1.0)
    status, _ = training_metrics(get_settings(), advice.job_id)
    assert status["ladder"] == ladder_dicts(advice.ladder)
    assert client.get_run(advice.mlflow_run_id).data.tags["customizer.decision"] == "advice only"
    assert not any(get_settings().jobs_dir.glob("*/checkpoints")) and not client.search_prompts(filter_string="name = 'team.coder-advice-prompt'")
    shutil.rmtree(tmp_path / "teach", ignore_errors=True)

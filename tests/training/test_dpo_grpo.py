"""DPO and GRPO on the tiny model: trained parameters change, frozen ones do not."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.catalog import get_config
from core.specs import Hyperparameters
from data.formats import detect_format
from tests.conftest import TINY_CONFIG_URN, canonical_dataset, changed_by_adapter
from training.common import Hooks, TrainingError
from training.dpo import train_dpo
from training.grpo import train_grpo
from training.rewards import RewardError


def dataset(folder: Path, training: list[dict], validation: list[dict]):
    """An ingested dataset written directly, carrying the formats ingest would have found."""
    data = canonical_dataset(folder, training, validation)
    formats = {"training": detect_format(training[0]), "validation": detect_format(validation[0]), "testing": detect_format(validation[0])}
    return data.model_copy(update={"formats": formats})


def pairs(count: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"Reply with the word ok. Item {i}", "chosen_response": "ok", "rejected_response": "no way"} for i in range(start, start + count)]


def prompts(count: int) -> list[dict]:
    return [{"prompt": f"Reply with the word ok. Item {i}", "answer": "ok"} for i in range(count)]


def test_dpo_lora_moves_the_adapter_toward_the_chosen_answers(tmp_path: Path, settings, tiny_model_dir):
    data = dataset(tmp_path / "data", pairs(16), pairs(4, start=50))
    hp = Hyperparameters.model_validate({"training_type": "dpo", "epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "log_every_n_steps": 1})
    seen = []
    result = train_dpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings, Hooks(sink=lambda *m: seen.append(m)))
    assert result.artifact == "adapter" and result.steps == 8 and len(result.val_loss) == 2
    margins = [v for name, v, _ in seen if name == "rewards/margins"]
    assert margins and margins[-1] > 0, "the chosen answer did not become more likely than the rejected one"
    changed = changed_by_adapter(tiny_model_dir, Path(result.output_dir))
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_dpo_all_weights_changes_the_model(tmp_path: Path, settings, tiny_model_dir):
    data = dataset(tmp_path / "data", pairs(8), pairs(4, start=50))
    hp = Hyperparameters.model_validate({"training_type": "dpo", "finetuning_type": "all_weights", "batch_size": 4, "learning_rate": 1e-3})
    result = train_dpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings)
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(Path(result.output_dir) / "model.safetensors")
    assert result.artifact == "model" and sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2


def test_dpo_refuses_data_that_is_not_pairs(tmp_path: Path, settings, tiny_model_dir):
    data = dataset(tmp_path / "data", [{"prompt": "x", "completion": "y"}] * 4, pairs(2))
    hp = Hyperparameters.model_validate({"training_type": "dpo", "batch_size": 4})
    with pytest.raises(TrainingError, match=r"training/ holds completion records; DPO needs preference records"):
        train_dpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings)


@pytest.mark.parametrize("finetuning_type", ["lora", "all_weights"])
def test_grpo_learns_from_a_user_reward(tmp_path: Path, settings, tiny_model_dir, finetuning_type):
    data = dataset(tmp_path / "data", prompts(8), prompts(2))
    hp = Hyperparameters.model_validate(
        {
            "training_type": "grpo", "finetuning_type": finetuning_type, "learning_rate": 1e-2, "log_every_n_steps": 1,
            "grpo": {"rewards": ["tests.training.rewards_for_tests:shorter_is_better", "exact_answer"],
                     "num_generations_per_prompt": 4, "num_prompts_per_step": 2, "max_new_tokens": 8},
        }
    )
    result = train_grpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings)
    assert result.steps == 4 and result.val_loss == [] and result.stop_reason == "completed 1 epoch(s)"
    if finetuning_type == "lora":
        changed = changed_by_adapter(tiny_model_dir, Path(result.output_dir))
        assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    else:
        before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(Path(result.output_dir) / "model.safetensors")
        assert any(not torch.equal(before[k], after[k]) for k in before)


def test_unknown_rewards_are_refused_by_name(tmp_path: Path, settings, tiny_model_dir):
    data = dataset(tmp_path / "data", prompts(4), prompts(2))
    for name, message in [("nonsense", "not a built-in reward"), ("no_such_mod:fn", "cannot import"), ("json:nothing_here", "no callable")]:
        hp = Hyperparameters.model_validate({"training_type": "grpo", "grpo": {"rewards": [name]}})
        with pytest.raises(RewardError, match=message):
            train_grpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings)


def test_grpo_refuses_data_that_is_not_reward_records(tmp_path: Path, settings, tiny_model_dir):
    data = dataset(tmp_path / "data", pairs(4), pairs(2))
    hp = Hyperparameters.model_validate({"training_type": "grpo"})
    with pytest.raises(TrainingError, match=r"training/ holds preference records; GRPO needs reward records"):
        train_grpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings)


def test_grpo_rewards_read_every_answer_column(tmp_path: Path, settings, tiny_model_dir):
    """Records answered by ``solution``, ``ground_truth`` and ``choices`` + ``label`` (text or index)
    in one split: every built-in reward scores every row (a reward that could not read a row raises)."""
    shapes = [
        {"solution": "ok"}, {"ground_truth": 4}, {"choices": ["no", "ok"], "label": "ok"}, {"choices": ["ok", "no"], "label": 0},
    ]
    rows = [{"prompt": f"Reply with the word ok. Item {i}"} | shapes[i % len(shapes)] for i in range(8)]
    data = dataset(tmp_path / "data", rows, rows[:2])
    hp = Hyperparameters.model_validate(
        {
            "training_type": "grpo", "learning_rate": 1e-2, "log_every_n_steps": 1,
            "grpo": {"rewards": ["exact_answer", "multiple_choice", "numeric_answer", "json_format"],
                     "num_generations_per_prompt": 2, "num_prompts_per_step": 2, "max_new_tokens": 4},
        }
    )
    seen = []
    result = train_grpo(str(tiny_model_dir), data, get_config(TINY_CONFIG_URN, settings), hp, tmp_path / "job", settings, Hooks(sink=lambda *m: seen.append(m)))
    assert result.steps == 4 and result.stop_reason == "completed 1 epoch(s)"
    logged = {name for name, _, _ in seen}
    assert {"rewards/exact_answer/mean", "rewards/multiple_choice/mean", "rewards/numeric_answer/mean"} <= logged, sorted(logged)

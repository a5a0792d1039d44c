"""The training rows of the benchmark table: customizer against bare TRL and TRL-best at equal final
loss, and the loss parity of `auto` precision against fp32."""

from __future__ import annotations

import pytest

from bench import report
from bench.train import StepClock, no_worse_loss, same_loss


def test_rows_against_both_trl_sides_and_the_parity_of_auto():
    data = {"model": "embedded model", "batch_size": 8, "repeats": 3, "device": {"kind": "cpu", "name": "cpu"},
            "tokens_per_second": {"customizer": 390.0, "trl": 100.0, "trl-best": 350.0},
            "same_loss": {"trl": True, "trl-best": False},
            "parity": {"auto_precision": "bf16-mixed", "auto_loss": 1.01, "fp32_loss": 1.0, "within": True}}
    bare, best, parity = report.train_rows(data)
    assert "bare TRL" in bare.metric and "medians of 3" in bare.metric and bare.verdict == "met" and bare.goal == ">= 2.00x"
    assert best.ratio == pytest.approx(390 / 350) and best.goal == ">= 1.15x"
    assert best.verdict == "missed (final loss worse)"  # faster, but learning less per step
    assert (parity.ours, parity.baseline, parity.goal, parity.verdict) == ("1.0100", "1.0000", "within ±2%", "met")
    assert "bf16-mixed" in parity.metric and parity.ratio == pytest.approx(1.01)

    slower = data | {"same_loss": {"trl": True, "trl-best": True}, "parity": data["parity"] | {"auto_loss": 1.05, "within": False}}
    _, best, parity = report.train_rows(slower)
    assert best.verdict == "missed" and parity.verdict == "missed"  # 1.11x < 1.15x; 5% off fp32


def test_same_loss_is_relative_to_the_reference():
    assert same_loss(2.03, 2.0) and same_loss(1.97, 2.0)
    assert not same_loss(2.05, 2.0) and not same_loss(1.5, 2.0)


def test_a_lower_loss_is_no_worse_but_a_higher_one_beyond_2_percent_is():
    assert no_worse_loss(1.5, 2.0) and no_worse_loss(2.03, 2.0)
    assert not no_worse_loss(2.05, 2.0)


def test_every_side_is_timed_from_the_start_of_training_to_its_last_step(monkeypatch):
    now = iter([10.0, 12.0, 13.0, 14.0])  # begin, then three steps' logs
    monkeypatch.setattr("bench.train.time.perf_counter", lambda: next(now))
    clock = StepClock()
    with pytest.raises(RuntimeError, match="logged no tokens"):
        clock.figures()
    clock.begin()
    clock.begin()  # a later progress report does not restart it (no perf_counter read)
    for tokens in (100.0, 200.0, 300.0):
        clock.log(tokens)
    # validation and saving after the last log are not counted; steady leaves the first step out
    assert clock.figures() == {"seconds": 4.0, "tokens": 300.0, "steady_tokens_per_second": 100.0}
    with pytest.raises(RuntimeError, match="before training began"):
        StepClock().log(1.0)

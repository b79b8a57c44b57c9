"""CPUTimeBudget ends training after a fixed CPU time, counted across resumes."""

from __future__ import annotations

import time

import pytest
import torch

from mss.callbacks.cpu_budget import CPUTimeBudget
from tests.test_train import compose_train, tiny_overrides
from train import train


def test_budget_stops_training_early_and_is_saved_for_resume(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + [
            "callbacks=[default,cpu_budget]",
            "callbacks.cpu_budget.max_cpu_seconds=1e-3",  # spent by the first step
            "trainer.max_epochs=5",
        ]
    )
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    # two batches per epoch and trainer.min_epochs=1: the budget ends the run after the first
    # epoch, where five epochs would reach step 10
    # (last.ckpt is the one written at the end of training: one epoch done)
    assert state["global_step"] == 2 and state["epoch"] == 1
    (budget_state,) = [v for k, v in state["callbacks"].items() if "CPUTimeBudget" in k]
    assert budget_state["used"] >= 1e-3


def test_budget_ends_with_a_validation_when_validating_every_nth_epoch(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + [
            "callbacks=[default,cpu_budget]",
            "callbacks.cpu_budget.max_cpu_seconds=1e-3",
            "trainer.max_epochs=5",
            "trainer.check_val_every_n_epoch=4",
        ]
    )
    train(cfg)
    # the first epoch is not one that validates (every 4th), but the budget's stop is: its
    # validation picks the best checkpoint, which the run's evaluation then scores
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    assert checkpoints == ["epoch_000.ckpt"]


def test_used_time_counts_this_process_and_earlier_runs():
    budget = CPUTimeBudget(max_cpu_seconds=10.0)
    budget.load_state_dict({"used": 4.0})
    assert budget.used == 4.0
    budget.on_fit_start(None, None)
    start = time.process_time()
    while time.process_time() - start < 0.05:  # burn CPU, not wall time
        pass
    assert 4.05 <= budget.used < 4.5
    assert budget.state_dict()["used"] == pytest.approx(budget.used, abs=0.05)


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_cpu_seconds"):
        CPUTimeBudget(0)

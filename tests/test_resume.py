"""Fault tolerance: resume after SIGKILL, exact resume at epoch boundaries, NaN never saved."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mss.callbacks.finite_guard import NonFiniteGuard
from mss.checkpoint import load_checkpoint
from mss.errors import NonFiniteError
from tests.test_train import compose_train, tiny_overrides
from train import train

REPO = Path(__file__).resolve().parents[1]
# 8 chunks of 0.5 s per epoch in batches of 2: 4 optimizer steps per epoch
STEPS_PER_EPOCH = 4


def steady(root, validation, out: Path) -> list[str]:
    return tiny_overrides(root, validation, out) + [
        "data.samples_per_epoch=8",
        "callbacks.early_stopping.patience=100",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "trainer.deterministic=true",
    ]


def run_train_script(args: list[str]) -> subprocess.CompletedProcess:
    """train.py in a child process, as a user (or a requeued job) runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def kill_at_step(step: int) -> list[str]:
    return ["+callbacks.kill._target_=tests.helpers.KillAtStep", f"+callbacks.kill.step={step}"]


def assert_same_final_weights(whole: Path, split: Path) -> None:
    expected = load_checkpoint(whole / "checkpoints" / "last.ckpt")
    got = load_checkpoint(split / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_and_finishes(tiny_musdb_root, tiny_validation_tracks,
                                                     tmp_path):  # fmt: skip
    run_dir = tmp_path / "run"
    args = [
        o
        for o in steady(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        if not o.startswith("paths.output_dir")
    ] + [f"hydra.run.dir={run_dir}", "trainer.max_epochs=2"]
    # killed after step 6 of 8, in the second epoch, before step 6 could be saved
    killed = run_train_script([*args, *kill_at_step(6)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert 6 - saved["global_step"] <= 2  # lost at most the checkpoint interval
    assert saved["global_step"] == 4  # the step-4 save (the kill came before step 6's)

    resumed = run_train_script([*args, "ckpt_path=last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 2 * STEPS_PER_EPOCH and final["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_from_an_epoch_boundary_gives_the_uninterrupted_weights(
    tiny_musdb_root, tiny_validation_tracks, tmp_path, workers
):
    loader = [f"data.num_workers={workers}"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(compose_train(steady(tiny_musdb_root, tiny_validation_tracks, whole)
                        + [*loader, "trainer.max_epochs=2"]))  # fmt: skip
    first = steady(tiny_musdb_root, tiny_validation_tracks, split) + loader
    train(compose_train(first + ["trainer.max_epochs=1"]))
    train(compose_train(first + ["trainer.max_epochs=2", "ckpt_path=last"]))

    assert_same_final_weights(whole, split)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_mid_epoch_gives_the_uninterrupted_weights(
    tiny_musdb_root, tiny_validation_tracks, tmp_path, workers
):
    """Killed in the second epoch and resumed from its step-6 checkpoint (2 of that epoch's 4
    batches done): the resumed run trains on the chunks the uninterrupted run would have, in
    that epoch (not its first batches again) and with loader workers (not epoch 0's chunks)."""
    loader = [f"data.num_workers={workers}"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(compose_train(steady(tiny_musdb_root, tiny_validation_tracks, whole)
                        + [*loader, "trainer.max_epochs=2"]))  # fmt: skip
    args = steady(tiny_musdb_root, tiny_validation_tracks, split) + [
        *loader,
        "trainer.max_epochs=2",
    ]
    killed = run_train_script([*args, f"hydra.run.dir={tmp_path / 'hydra'}", *kill_at_step(7)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert load_checkpoint(split / "checkpoints" / "last.ckpt")["global_step"] == 6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compose_train([*args, "ckpt_path=last"]))
    assert not [w for w in caught if "ended before the epoch ended" in str(w.message)]

    assert_same_final_weights(whole, split)


def test_a_nan_loss_stops_training_and_never_reaches_a_checkpoint(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    overrides = steady(tiny_musdb_root, tiny_validation_tracks, tmp_path) + [
        "trainer.max_epochs=2",
        "+callbacks.poison._target_=tests.helpers.PoisonBatch",
        "+callbacks.poison.step=3",
    ]
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 3 \(epoch 0\)") as e:
        train(compose_train(overrides))
    assert f"last good checkpoint is {last}" in str(e.value)
    saved = load_checkpoint(last)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_non_finite_gradients_and_weights_are_refused():
    class Trainer:  # what the guard reads of a trainer
        global_step, current_epoch, checkpoint_callbacks = 7, 1, []
        precision_plugin = object()

        class strategy:  # noqa: N801
            @staticmethod
            def reduce_boolean_decision(decision, all=True):
                return decision

    net = torch.nn.Linear(2, 1)
    net(torch.ones(1, 2)).sum().backward()
    guard = NonFiniteGuard()
    guard.on_before_backward(Trainer, net, torch.tensor(1.0))
    guard.on_before_optimizer_step(Trainer, net, None)  # finite: nothing happens
    net.weight.grad[0, 0] = torch.inf
    with pytest.raises(NonFiniteError, match="non-finite gradient at step 7 .*no checkpoint"):
        guard.on_before_optimizer_step(Trainer, net, None)
    state = {"state_dict": {"w": torch.tensor([1.0, torch.nan]), "n": torch.tensor([3])}}
    with pytest.raises(NonFiniteError, match="non-finite weights"):
        guard.on_save_checkpoint(Trainer, net, state)
    guard.on_save_checkpoint(Trainer, net, {"state_dict": {"w": torch.ones(2)}})

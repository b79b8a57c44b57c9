"""The training recipe's levers: warm-up + cosine schedules, EMA of the weights, accumulation."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from mss.callbacks.cpu_budget import CPUTimeBudget
from mss.callbacks.ema import EMA
from mss.checkpoint import load_checkpoint, load_separator
from mss.schedules import warmup_cosine
from tests.test_train import compose_train, tiny_overrides
from train import train


def lrs(scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_cosine_over_steps():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    got = lrs(warmup_cosine(optimizer, warmup_steps=4, min_lr_ratio=0.1, total_steps=14), 16)
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    for step in range(4, 14):
        done = (step - 4) / 10
        assert got[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
    assert got[14:] == pytest.approx([0.1, 0.1])  # flat after the horizon


def test_cosine_over_a_cpu_budget_follows_its_progress():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    used = [0.0]
    scheduler = warmup_cosine(optimizer, progress=lambda: used[0])
    for fraction, expected in [(0.0, 2.0), (0.5, 1.0), (1.0, 0.0), (1.7, 0.0)]:
        used[0] = fraction
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="horizon"):
        warmup_cosine(optimizer)


def test_the_module_gives_the_schedule_the_runs_horizon():
    from types import SimpleNamespace

    from mss.models.simple_demucs import SimpleDemucs
    from mss.module import SeparationModule

    net = SimpleDemucs(sources=["a", "b"], channels=4, lstm_layers=1)
    module = SeparationModule(
        net, torch.nn.L1Loss(), lambda params: torch.optim.Adam(params),
        scheduler=functools.partial(warmup_cosine, warmup_steps=2),  # as Hydra's _partial_
    )  # fmt: skip
    budget = CPUTimeBudget(100.0)
    budget.used_before = 25.0
    module._trainer = SimpleNamespace(callbacks=[budget], estimated_stepping_batches=float("inf"))
    assert module._horizon()["progress"]() == pytest.approx(0.25, abs=0.01)
    module._trainer = SimpleNamespace(callbacks=[], estimated_stepping_batches=40)
    assert module._horizon() == {"total_steps": 40}


def test_ema_averages_with_a_warmed_up_decay():
    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

    class Trainer:
        global_step = 0

    module, ema = Module(), EMA(decay=0.9)
    ema.on_fit_start(Trainer, module)
    expected = module.net.weight.detach().clone()
    for step in range(1, 6):
        with torch.no_grad():
            module.net.weight.add_(1.0)
        Trainer.global_step = step
        decay = min(0.9, step / (9 + step))  # (1 + t) / (10 + t) with t = step - 1
        expected = decay * expected + (1 - decay) * module.net.weight.detach()
        ema.on_train_batch_end(Trainer, module, None, None, 0)
    torch.testing.assert_close(ema.ema["weight"], expected)
    ema.on_train_batch_end(Trainer, module, None, None, 0)  # no new optimizer step
    torch.testing.assert_close(ema.ema["weight"], expected)


@pytest.mark.slow
def test_ema_is_what_validation_and_checkpoints_use_and_resume_continues(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    base = tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path) + [
        "callbacks=[default,ema]",
        "callbacks.ema.decay=0.5",
        "callbacks.model_checkpoint.monitor=val/loss",
        "callbacks.model_checkpoint.mode=min",
        "+trainer.limit_train_batches=2",
        "module/scheduler=cosine",
        "module.scheduler.warmup_steps=1",
    ]
    metrics = train(compose_train(base + ["trainer.max_epochs=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = load_checkpoint(last)
    (ema_state,) = [v for k, v in state["callbacks"].items() if k.startswith("EMA")]
    assert ema_state["updates"] == 2
    raw, averaged = ema_state["raw"], state["state_dict"]
    assert any(not torch.equal(raw[n], averaged[f"net.{n}"]) for n in raw)
    # validation ran on the averaged weights that the checkpoint holds
    from mss.apply import separate
    from mss.data.audio import read_mixture, read_stems
    from mss.data.index import index_tracks

    separator = load_separator(last)
    loss = __import__("hydra").utils.instantiate(compose_train(base).loss)
    (track,) = [t for t in index_tracks(tiny_musdb_root, "train", separator.sources)
                if t.name in tiny_validation_tracks]  # fmt: skip
    estimate = separate(separator, torch.from_numpy(read_mixture(track)), 1.0, 0.25, 44100)
    expected = float(
        loss(estimate[None], torch.from_numpy(read_stems(track, separator.sources))[None])
    )
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-4)
    # the cosine schedule reached its end (2 steps: warm-up 1, then the decay)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)

    train(compose_train(base + ["trainer.max_epochs=2", "ckpt_path=last"]))
    resumed = load_checkpoint(last)
    (ema_state,) = [v for k, v in resumed["callbacks"].items() if k.startswith("EMA")]
    assert resumed["global_step"] == ema_state["updates"] == 4
    assert all(np.isfinite(v.numpy()).all() for v in ema_state["raw"].values())


@pytest.mark.slow
def test_gradient_accumulation_counts_optimizer_steps(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    overrides = tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path) + [
        "trainer.max_epochs=1",
        "+trainer.accumulate_grad_batches=2",
        "data.samples_per_epoch=8",
        "callbacks=[default,ema]",
    ]
    train(compose_train(overrides))
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    (ema_state,) = [v for k, v in state["callbacks"].items() if k.startswith("EMA")]
    assert state["global_step"] == 2 and ema_state["updates"] == 2  # 4 batches, 2 steps

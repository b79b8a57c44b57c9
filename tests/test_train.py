"""The whole training path: train(cfg) on generated data, resume, DDP on CPU, multirun."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mss.apply import separate
from mss.checkpoint import load_separator
from mss.data.audio import read_mixture, read_stems
from mss.data.index import index_tracks
from mss.data.toy import track_names
from mss.errors import CheckpointError
from mss.metrics.bsseval import bss_eval_track
from train import train

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SOURCES = ["drums", "bass", "other", "vocals"]


def tiny_overrides(root: Path, validation: list[str], output_dir: Path) -> list[str]:
    """A tiny simple Demucs on the tiny generated set, so a run takes seconds on 2 cores."""
    return [
        "data=musdb18hq",
        f"data.root={root}",
        f"data.validation_tracks=[{','.join(validation)}]",
        "data.segment=0.5",
        "data.samples_per_epoch=4",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "model.channels=4",
        "module.valid_segment=1.0",
        "logger=csv",
        "trainer.accelerator=cpu",
        f"paths.output_dir={output_dir}",
        f"paths.data_dir={output_dir}/data",
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_fast_dev_run(tiny_musdb_root, tiny_validation_tracks, tmp_path):
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path) + ["debug=fdr"]
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    for name in ["drums", "bass", "other", "vocals"]:
        assert f"val/usdr_{name}" in metrics
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_resume_restores_epoch_optimizer_and_best_score(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    base = tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path) + [
        "+trainer.limit_train_batches=2",
        "callbacks.early_stopping.patience=100",
        # the scheduler watches val/loss; let the checkpoint watch it too, to compare the two
        "callbacks.model_checkpoint.monitor=val/loss",
        "callbacks.model_checkpoint.mode=min",
    ]
    first = train(compose_train(base + ["trainer.max_epochs=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    # written at the end of training by last_checkpoint (epoch 0 done, so it says epoch 1)
    assert state["epoch"] == 1 and state["global_step"] == 2
    best_before = first["best_ckpt"]

    train(compose_train(base + ["trainer.max_epochs=2", "ckpt_path=last"]))
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 2  # two epochs done
    assert state["global_step"] == 4  # counted on from the first run, not restarted
    adam_steps = {int(s["step"]) for s in state["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4}  # Adam moments carried over
    checkpoint_state = next(v for k, v in state["callbacks"].items() if "ModelCheckpoint" in k)
    val_losses = []
    for ckpt in (tmp_path / "checkpoints").glob("epoch_*.ckpt"):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        saved_cb = next(v for k, v in saved["callbacks"].items() if "ModelCheckpoint" in k)
        val_losses.append(float(saved_cb["current_score"]))
    assert float(checkpoint_state["best_model_score"]) == pytest.approx(min(val_losses))
    assert best_before  # the first run's best checkpoint was known to the resumed one
    # ReduceLROnPlateau stepped after each validation, both steps inside the checkpoint
    scheduler = state["lr_schedulers"][0]
    assert scheduler["last_epoch"] == 2
    assert scheduler["best"] == pytest.approx(min(val_losses))


def test_checkpoint_alone_rebuilds_the_separator(tiny_musdb_root, tiny_validation_tracks, tmp_path):
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + ["trainer.max_epochs=1", "+trainer.limit_train_batches=1"]
    )
    metrics = train(cfg)
    separator = load_separator(metrics["best_ckpt"])
    state = torch.load(metrics["best_ckpt"], map_location="cpu", weights_only=False)
    for name, tensor in separator.state_dict().items():
        torch.testing.assert_close(tensor, state["state_dict"][f"net.{name}"])
    assert separator.sources == ["drums", "bass", "other", "vocals"]
    mix = torch.randn(1, 2, 4410)
    assert separator(mix).shape == (1, 4, 2, 4410)


def test_load_separator_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing.ckpt"):
        load_separator(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_separator(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, foreign)
    with pytest.raises(ValueError, match="net_config"):
        load_separator(foreign)


def test_ckpt_path_last_without_checkpoint_is_a_clear_error(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path) + ["ckpt_path=last"]
    )
    with pytest.raises(CheckpointError, match="last.ckpt"):
        train(cfg)


def run_script(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="1")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def script_overrides(root: Path, validation: list[str], data_dir: Path) -> list[str]:
    """`tiny_overrides` for the command line, where paths.output_dir comes from hydra."""
    return [
        o
        for o in tiny_overrides(root, validation, data_dir)
        if not o.startswith("paths.output_dir")
    ]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_musdb_root, tmp_path):
    # three validation tracks over two ranks: rank 1 gets a repeat of the first one, which must
    # not count twice in val/loss and val/sdr
    validation = track_names("train", 4)[:3]
    run_dir = tmp_path / "run"
    result = run_script(
        script_overrides(tiny_musdb_root, validation, tmp_path)
        + [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    # metrics mss gathers itself get no advice to sync them, the others still would
    assert "sync_dist=True" not in result.stderr + result.stdout
    state = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    # 4 chunks per epoch split over 2 ranks, batch 2: one optimizer step per rank
    assert state["global_step"] == 1
    metrics = pd.read_csv(run_dir / "csv" / "version_0" / "metrics.csv")
    assert metrics["train/loss_epoch"].notna().any()
    logged = metrics.dropna(subset=["val/sdr"]).iloc[-1]

    # the same validation in one process, each track once, from the checkpoint written after it
    separator = load_separator(run_dir / "checkpoints" / "last.ckpt")
    loss = instantiate(OmegaConf.load(run_dir / ".hydra" / "config.yaml").loss)  # the run's
    tracks = [t for t in index_tracks(tiny_musdb_root, "train", SOURCES) if t.name in validation]
    losses, medians = [], []
    for track in tracks:
        mix = torch.from_numpy(read_mixture(track))
        stems = torch.from_numpy(read_stems(track, SOURCES))
        estimate = separate(separator, mix, segment=1.0, overlap=0.25, sample_rate=44100)
        losses.append(float(loss(estimate[None], stems[None])))
        scores = bss_eval_track(
            stems.transpose(1, 2).double(), estimate.transpose(1, 2).double(), SOURCES,
            win=44100, hop=44100, sdr_only=True,
        )  # fmt: skip
        medians.append([np.nanmedian(scores[s]["SDR"]) for s in SOURCES])
    assert logged["val/loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    expected = np.median(np.array(medians), axis=0)
    for name, value in zip(SOURCES, expected, strict=True):
        assert logged[f"val/sdr_{name}"] == pytest.approx(value, abs=1e-3)
    assert logged["val/sdr"] == pytest.approx(expected.mean(), abs=1e-3)


@pytest.mark.slow
def test_multirun_sweeps_the_learning_rate(tiny_musdb_root, tiny_validation_tracks, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_script(
        ["-m"]
        + script_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + [
            "module.optimizer.lr=1e-3,1e-4",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    learning_rates = []
    for job in ("0", "1"):
        state = torch.load(
            sweep_dir / job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        learning_rates.append(state["optimizer_states"][0]["param_groups"][0]["lr"])
    assert learning_rates == pytest.approx([1e-3, 1e-4])


def test_only_the_metrics_mss_gathers_are_exempt_from_the_sync_dist_advice():
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from mss.module import ignore_sync_dist_advice

    names = ["val/loss", "val/usdr", "val/usdr_bass", "val/sdr", "val/sdr_vocals", "val/sar_other",
             "train/loss", "val/my_metric"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        ignore_sync_dist_advice()  # as SeparationModule.setup does
        for name in names:
            warnings.warn(
                f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)` when logging "
                "on epoch level in distributed setting to accumulate the metric across devices.",
                PossibleUserWarning,
                stacklevel=1,
            )
    assert [str(w.message).split("'")[1] for w in caught] == ["train/loss", "val/my_metric"]


def test_spectral_loss_logs_its_two_terms(tiny_musdb_root, tiny_validation_tracks, tmp_path):
    """loss=l1_mrstft_sampled trains through Lightning, with train/loss_l1 and train/loss_stft
    logged beside train/loss (issue 11)."""
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + ["debug=fdr", "loss=l1_mrstft_sampled"]
    )
    metrics = train(cfg)
    terms = {name: float(metrics[f"train/loss_{name}_step"]) for name in ("l1", "stft")}
    assert all(np.isfinite(value) and value > 0 for value in terms.values())
    assert float(metrics["train/loss_step"]) == pytest.approx(terms["l1"] + terms["stft"], rel=1e-5)


def test_validation_every_second_epoch_with_the_plateau_schedule(
    tiny_musdb_root, tiny_validation_tracks, tmp_path
):
    """trainer.check_val_every_n_epoch=2 with the default plateau schedule: epochs without
    validation train on instead of failing on the missing val/loss."""
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + ["+trainer.limit_train_batches=1", "trainer.max_epochs=2",
           "trainer.check_val_every_n_epoch=2"]
    )  # fmt: skip
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))

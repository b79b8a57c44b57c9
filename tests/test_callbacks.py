"""ValidationSDR logs the leaderboard SDR of the full validation tracks during training."""

from __future__ import annotations

import logging

import museval
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mss.apply import separate
from mss.callbacks.validation_sdr import ValidationSDR
from mss.checkpoint import load_separator
from mss.data.audio import read_mixture, read_stems
from mss.data.index import index_tracks
from tests.test_train import compose_train, tiny_overrides
from train import train

SOURCES = ["drums", "bass", "other", "vocals"]


def test_val_sdr_is_museval_on_the_validation_estimates(
    tiny_musdb_root, tiny_validation_tracks, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="mss.callbacks.epoch_summary")
    cfg = compose_train(
        tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        + [
            "logger=tensorboard",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "callbacks.validation_sdr.media_every_n_epochs=1",
            "callbacks.validation_sdr.media_seconds=1.0",
        ]
    )
    metrics = train(cfg)

    # the validation estimates again, from the checkpoint written after that validation
    separator = load_separator(tmp_path / "checkpoints" / "last.ckpt")
    (track,) = [
        t
        for t in index_tracks(tiny_musdb_root, "train", SOURCES)
        if t.name in tiny_validation_tracks
    ]
    estimate = separate(
        separator, torch.from_numpy(read_mixture(track)), segment=1.0, overlap=0.25,
        sample_rate=44100,
    )  # fmt: skip
    references = read_stems(track, SOURCES).transpose(0, 2, 1)
    sdr, *_ = museval.evaluate(
        references, estimate.numpy().transpose(0, 2, 1), win=44100, hop=44100
    )
    expected = np.nanmedian(sdr, axis=1)  # one track: the median over tracks is its own
    for name, value in zip(SOURCES, expected, strict=True):
        assert metrics[f"val/sdr_{name}"] == pytest.approx(value, abs=1e-3)
    assert metrics["val/sdr"] == pytest.approx(expected.mean(), abs=1e-3)
    # the checkpoint kept is the best by val/sdr
    assert metrics["best_ckpt"].endswith(".ckpt")

    events = EventAccumulator(str(next((tmp_path / "tensorboard").rglob("events.out.*")).parent))
    events.Reload()
    tags = events.Tags()
    assert "val_audio/track0_vocals" in tags["audio"]
    assert "val_spectrogram/track0" in tags["images"]
    assert "val/sdr" in tags["scalars"]

    # EpochSummary: one line for the one validation (the sanity check is not summarised)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mss.callbacks.epoch_summary"]
    assert line.startswith("epoch 0 step 1 |")
    assert f"val/sdr {metrics['val/sdr']:.2f} dB" in line
    assert f"vocals {metrics['val/sdr_vocals']:.2f}" in line
    assert "train/loss" in line and "val/loss" in line and "lr 0.001" in line


def test_validation_sdr_rejects_bad_options():
    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationSDR(every_n_epochs=0)
    with pytest.raises(ValueError, match="metrics"):
        ValidationSDR(metrics="sir")

"""The quality benchmark: every preset composes and builds its model (a typo would otherwise
surface 35 minutes into a sweep); a finished run's record, archived, reports the same scores and
curve as the run folder it came from; an unfinished run is left out; a killed one resumes."""

import argparse
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.test_train import compose_train
from train import resolve_ckpt_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_quality import (  # noqa: E402
    LEARNED,
    SOURCES,
    archive,
    collect,
    command,
    read_curve,
    report,
    table,
)

OVERRIDES = OverridesParser.create()


@pytest.mark.parametrize("preset", sorted(LEARNED))
def test_preset_composes_and_builds(preset, tmp_path):
    cfg = compose_train(["experiment=bench", *LEARNED[preset], f"paths.output_dir={tmp_path}"])
    for override in LEARNED[preset]:
        # Hydra's own parser reads the override as the command line does: the key without a
        # `+` that adds it, the value as typed (3e-4, [256,512])
        parsed = OVERRIDES.parse_overrides([override])[0]
        key = parsed.key_or_group
        if "." in key:  # a value, not a group: it wins over experiment(_model) defaults
            expected = parsed.value()
            selected = OmegaConf.select(cfg, key)
            if OmegaConf.is_config(selected):
                selected = OmegaConf.to_container(selected)
            assert selected == expected, override
    model = instantiate(cfg.model)
    assert list(model.sources) == list(cfg.data.sources)


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run_dir = tmp_path / "unet" / "seed1"
    overrides = [arg for arg in command("unet", 1, run_dir, 60)[2:] if "hydra." not in arg]
    cfg = compose_train([*overrides, f"paths.output_dir={run_dir}"])
    assert cfg.callbacks.cpu_budget.max_cpu_seconds == 60
    assert resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir) is None  # a fresh start
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir) == str(
        run_dir / "checkpoints" / "last.ckpt"
    )


def test_a_resumed_run_s_curve_keeps_the_resumed_validations(tmp_path):
    """Killed after its step-96 validation but checkpointed at step 64, the run logs step 96
    again on resuming: the curve has each step once, the later line winning."""
    (tmp_path / "train.log").write_text(
        "epoch 0 step 32 | 1.0 min wall, 0.9 min CPU | train/loss 0.1 | val/sdr 1.50 dB (x)\n"
        "epoch 1 step 64 | 2.0 min wall, 1.8 min CPU | train/loss 0.1 | val/sdr 2.25 dB (x)\n"
        "epoch 2 step 96 | 3.0 min wall, 2.7 min CPU | train/loss 0.1 | val/sdr 2.50 dB (x)\n"
        "Restoring states from the checkpoint path at last.ckpt\n"
        "epoch 2 step 96 | 3.5 min wall, 2.8 min CPU | train/loss 0.1 | val/sdr 2.40 dB (x)\n"
        "epoch 3 step 128 | 4.5 min wall, 3.7 min CPU | train/loss 0.1 | val/sdr 2.75 dB (x)\n"
        "CPU time budget of 240 s reached after 128 steps\n"
    )
    assert read_curve(tmp_path) == ([0.9, 1.8, 2.8, 3.7], [1.5, 2.25, 2.4, 2.75], 128)


def test_a_run_ended_by_max_steps_counts_the_steps_of_its_last_validation(tmp_path):
    (tmp_path / "train.log").write_text(
        "epoch 0 step 64 | 1.0 min wall, 0.9 min CPU | train/loss 0.1 | val/sdr 1.50 dB (x)\n"
        "epoch 1 step 128 | 2.0 min wall, 1.8 min CPU | train/loss 0.1 | val/sdr 2.25 dB (x)\n"
    )
    assert read_curve(tmp_path) == ([0.9, 1.8], [1.5, 2.25], 128)
    (tmp_path / "train.log").write_text("no validation yet\n")
    assert read_curve(tmp_path) == ([], [], None)


def _finished_run(run_dir: Path, sdr: float) -> None:
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "train.log").write_text(
        "epoch 0 step 32 | 1.0 min wall, 0.9 min CPU | train/loss 0.1 | val/sdr 1.50 dB (x)\n"
        "epoch 1 step 64 | 2.0 min wall, 1.8 min CPU | train/loss 0.1 | val/sdr 2.25 dB (x)\n"
        "CPU time budget of 120 s reached after 64 steps\n"
    )
    rows = ["aggregate,metric,source,value"]
    for index, source in enumerate(SOURCES):
        rows.append(f"sisec18,SDR,{source},{sdr + index}")
        rows.append(f"mean,uSDR,{source},{sdr}")
    (run_dir / "eval" / "summary.csv").write_text("\n".join(rows) + "\n")


def test_archive_keeps_what_report_reads(tmp_path):
    root, dest = tmp_path / "logs", tmp_path / "results"
    _finished_run(root / "unet" / "seed1", 3.0)
    _finished_run(root / "simple_demucs" / "seed2", 2.0)
    (root / "unet" / "seed2").mkdir(parents=True)  # still training: no scores yet
    (root / "unet" / "seed2" / "train.log").write_text("epoch 0 step 32\n")
    (root / "unet" / "seed1" / "checkpoints").mkdir()
    (root / "unet" / "seed1" / "checkpoints" / "last.ckpt").write_bytes(b"weights")

    archive(argparse.Namespace(root=root, dest=dest))

    assert collect(dest) == collect(root)
    runs = collect(dest)
    assert [seed for seed, _, _ in runs["unet"]] == [1]
    seed, scores, (cpu, sdr, steps) = runs["unet"][0]
    assert scores["avg"] == 4.5 and scores["uSDR"] == 3.0
    assert (cpu, sdr, steps) == ([0.9, 1.8], [1.5, 2.25], 64)
    assert not (dest / "unet" / "seed2").exists()
    assert not (dest / "unet" / "seed1" / "checkpoints").exists()
    assert table(collect(dest)) == table(collect(root))


def test_report_keeps_only_the_presets_asked_for_in_their_order(tmp_path, capsys):
    root = tmp_path / "logs"
    _finished_run(root / "unet" / "seed1", 3.0)
    _finished_run(root / "simple_demucs" / "seed2", 2.0)

    assert list(collect(root)) == ["simple_demucs", "unet"]
    assert list(collect(root, ["unet", "simple_demucs"])) == ["unet", "simple_demucs"]
    assert list(collect(root, ["simple_demucs", "openunmix"])) == ["simple_demucs"]
    report(argparse.Namespace(root=root, presets=["unet"], png=None))
    assert "| unet |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown \\['unet_typo'\\]"):
        report(argparse.Namespace(root=root, presets=["unet_typo"], png=None))

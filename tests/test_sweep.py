"""Optuna sweeps (`hparams_search=optuna`): the search space, a sweep with failing trials that goes
on, the SQLite study a rerun continues, and the table of trials."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mss.errors import ConfigError, NonFiniteError
from mss.sweep import objective, write_tables
from tests.test_cli import one_error_line, run_entry_point
from tests.test_train import CONF, script_overrides

optuna = pytest.importorskip("optuna", reason="pip install -e .[sweep]")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[sweep]")

SEARCHED = ["module.optimizer.lr", "data.segment", "data.batch_size", "model.channels"]


def test_the_search_space_names_keys_of_the_train_config(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hparams_search=optuna", f"hydra.sweep.dir={tmp_path}"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sorted(sweeper.params) == sorted(SEARCHED)
    for key in SEARCHED:  # an override of a key the config lacks would fail every trial
        assert OmegaConf.select(cfg, key) is not None, key
    assert (cfg.optimized_metric, sweeper.direction) == ("val/sdr", "maximize")
    assert sweeper.storage == f"sqlite:///{tmp_path}/optuna.db"
    assert sweeper.max_failure_rate == 1.0


def test_objective_refuses_a_missing_or_non_finite_metric():
    assert objective({"val/sdr": 1.5}, "val/sdr") == 1.5
    assert objective({"val/sdr": 1.5}, None) is None
    with pytest.raises(ConfigError, match=r"optimized_metric=val/sdx: .*\(val/loss, val/sdr\)"):
        objective({"val/sdr": 1.5, "val/loss": 0.1, "best_ckpt": ""}, "val/sdx")
    with pytest.raises(NonFiniteError, match="val/sdr is nan"):
        objective({"val/sdr": math.nan}, "val/sdr")


@pytest.mark.parametrize("direction, best", [("maximize", 1), ("minimize", 2)])
def test_the_table_names_the_best_trial_for_the_direction(direction, best, tmp_path):
    rows = [
        {"trial": 0, "state": "FAIL", "value": None, "lr": 0.1, "folder": "a", "error": "x",
         "overrides": "lr=0.1"},
        {"trial": 1, "state": "COMPLETE", "value": 3.0, "lr": 0.2, "folder": "b", "error": "",
         "overrides": "lr=0.2"},
        {"trial": 2, "state": "COMPLETE", "value": 1.0, "lr": 0.3, "folder": "c", "error": "",
         "overrides": "lr=0.3"},
    ]  # fmt: skip
    write_tables(rows, tmp_path, metric="val/loss", direction=direction)
    text = (tmp_path / "trials.md").read_text()
    assert f"Best: trial {best}," in text
    assert f"python train.py lr=0.{best + 1}" in text
    assert list(pd.read_csv(tmp_path / "trials.csv")["val/loss"].isna()) == [True, False, False]


def sweep_args(root, validation, tmp_path, trials: int) -> list[str]:
    """A sweep of `trials` trials of a tiny simple Demucs, one training step each; the first two
    runs that ever start fail, one with a NaN loss and one out of memory."""
    searched = ("data.segment=", "data.batch_size=", "model.channels=")  # fixed: not searched
    tiny = [o for o in script_overrides(root, validation, tmp_path) if not o.startswith(searched)]
    return tiny + [
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        # tiny choices for three searched keys; the learning rate keeps the config's range
        "data.segment=choice(0.5,0.75)",
        "data.batch_size=choice(1,2)",
        "model.channels=choice(2,4)",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+callbacks.fail._target_=tests.helpers.FailFirstRuns",
        f"+callbacks.fail.counter={tmp_path / 'runs'}",
        "+callbacks.fail.failures=[nan_loss,oom]",
    ]


@pytest.mark.slow
def test_a_sweep_records_failed_trials_goes_on_and_a_rerun_continues_it(
    tiny_musdb_root, tiny_validation_tracks, tmp_path, monkeypatch, capsys
):
    sweep = tmp_path / "sweep"
    args = sweep_args(tiny_musdb_root, tiny_validation_tracks, tmp_path, trials=3)
    code, err = run_entry_point("train", args, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    storage = f"sqlite:///{sweep}/optuna.db"
    study = optuna.load_study(study_name="mss", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE"]

    table = pd.read_csv(sweep / "trials.csv")
    assert list(table["trial"]) == [0, 1, 2]
    assert "non-finite loss (nan) at step 0" in table["error"][0]
    assert table["error"][1].startswith("OutOfMemoryError: CUDA out of memory")
    # each trial ran in its own folder with its parameters, and returned what it logged
    for _, row in table.iterrows():
        config = (sweep / row["folder"] / ".hydra" / "config.yaml").read_text()
        assert f"lr: {row['module.optimizer.lr']}" in config
    done = sweep / table["folder"][2]
    logged = pd.read_csv(done / "csv" / "version_0" / "metrics.csv")["val/sdr"].dropna()
    assert table["val/sdr"][2] == pytest.approx(logged.iloc[-1])
    assert study.best_trial.number == 2
    markdown = (sweep / "trials.md").read_text()
    assert f"Best: trial 2, val/sdr = {table['val/sdr'][2]:.4g}" in markdown
    again = markdown.split("python train.py ")[1].splitlines()[0]
    for key in SEARCHED:  # the best trial's values, and not a new sweep
        assert f"{key}={table[key][2]}" in again
    assert "hparams_search" not in again and "'data.validation_tracks=[" in again
    best_ckpt = done / "checkpoints" / "last.ckpt"
    before = best_ckpt.stat().st_mtime_ns

    # the same sweep folder again: the study goes on from 3 trials, in new folders
    args = sweep_args(tiny_musdb_root, tiny_validation_tracks, tmp_path, trials=1)
    code, err = run_entry_point("train", args, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    study = optuna.load_study(study_name="mss", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    table = pd.read_csv(sweep / "trials.csv")
    assert list(table["trial"]) == [0, 1, 2, 3]
    assert table["folder"].nunique() == 4
    assert best_ckpt.stat().st_mtime_ns == before  # the earlier trial's folder is untouched


@pytest.mark.slow
def test_a_sweep_in_which_every_trial_fails_writes_the_table_and_one_error_line(
    tiny_musdb_root, tiny_validation_tracks, tmp_path, monkeypatch, capsys
):
    sweep = tmp_path / "sweep"
    args = sweep_args(tiny_musdb_root, tiny_validation_tracks, tmp_path, trials=2)
    code, err = run_entry_point("train", args, monkeypatch, capsys)
    line = one_error_line(err, "train")
    assert code == 2
    assert "no trial of the sweep completed (2 failed)" in line and str(sweep / "trials.md") in line
    table = pd.read_csv(sweep / "trials.csv")
    assert list(table["state"]) == ["FAIL", "FAIL"]
    assert "non-finite loss (nan) at step 0" in table["error"][0]
    assert table["error"][1].startswith("OutOfMemoryError: CUDA out of memory")
    markdown = (sweep / "trials.md").read_text()
    assert "# Trials (2, 0 complete; val/sdr, maximize)" in markdown and "Best:" not in markdown

"""Every user mistake gets one line from every entry point, never a traceback."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra.core.global_hydra import GlobalHydra

import eval as eval_script  # imported here, outside capsys: Lightning's log
import train as train_script  # noqa: F401 - handlers keep the stderr they were made with
from tests.conftest import noise

REPO = Path(__file__).resolve().parents[1]


def run_entry_point(script: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run `train.py`/`eval.py` in this process as the shell would; returns (status, stderr)."""
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    try:
        module.main()
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        # Hydra's console handler holds this test's captured stream; drop it with the test
        logging.getLogger().handlers.clear()
    return code, capsys.readouterr().err


def one_error_line(stderr: str, script: str) -> str:
    """The single `<script>: error: ...` line; fails if there is a traceback or more lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if f"{script}.py: error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def train_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "data=musdb18hq",
        f"data.root={root}",
        "data.validation_tracks=[]",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        *extra,
    ]


def float_wav(path: Path, audio: np.ndarray, rate: int = 44100) -> None:
    sf.write(path, audio.T, rate, subtype="FLOAT")


BAD_TRAIN_DATA = {
    "missing stem": ({"train/Song": {"bass": None}}, r"train/Song/bass\.wav: missing"),
    "lengths disagree": (
        {"train/Song": {"bass": noise(0.7)}},
        r"bass\.wav: 30869 frames but mixture\.wav has 22050",
    ),
    "sample rates disagree": (
        {"train/Song": {"vocals": (noise(0.5, sample_rate=22050), 22050)}},
        r"vocals\.wav: sample rate 22050 Hz, expected 44100 Hz",
    ),
    "mono stem": ({"train/Song": {"drums": noise(0.5, channels=1)}}, r"drums\.wav: mono file"),
    "corrupt wav": (
        {"train/Song": {"other": b"RIFF\x10\x00\x00\x00WAVEjunk"}},
        r"other\.wav: unreadable or corrupt",
    ),
    "zero-byte wav": ({"train/Song": {"other": b""}}, r"other\.wav: unreadable or corrupt"),
    "text named .wav": (
        {"train/Song": {"mixture": b"this is a text file, not audio\n"}},
        r"mixture\.wav: unreadable or corrupt",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_DATA))
def test_train_names_the_file_of_bad_data_in_one_line(
    case, write_tree, tmp_path, monkeypatch, capsys
):
    tree, expected = BAD_TRAIN_DATA[case]
    root = write_tree(tree)
    code, err = run_entry_point("train", train_args(root, tmp_path), monkeypatch, capsys)
    assert code == 2
    assert "Song" in one_error_line(err, "train")
    assert __import__("re").search(expected, err), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_names_the_file_and_time_of_a_nan_sample(write_tree, tmp_path, monkeypatch, capsys):
    bad = noise(0.5)
    bad[1, 11025] = np.nan
    root = write_tree({"train/Song": {"vocals": bad}})
    code, err = run_entry_point("train", train_args(root, tmp_path), monkeypatch, capsys)
    line = one_error_line(err, "train")
    assert code == 2
    assert "train/Song/vocals.wav: NaN sample at 0.250 s (frame 11025, channel 2 of 2)" in line


def test_train_names_an_inf_sample_too(write_tree, tmp_path, monkeypatch, capsys):
    bad = noise(0.5)
    bad[0, 441] = -np.inf
    root = write_tree({"train/Song": {"bass": bad}})
    code, err = run_entry_point("train", train_args(root, tmp_path), monkeypatch, capsys)
    assert "bass.wav: Inf sample at 0.010 s (frame 441, channel 1 of 2)" in one_error_line(
        err, "train"
    )


def test_train_on_an_empty_or_missing_root(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_entry_point("train", train_args(empty, tmp_path), monkeypatch, capsys)
    assert code == 2 and "has no 'train' folder" in one_error_line(err, "train")
    (empty / "train").mkdir()
    code, err = run_entry_point("train", train_args(empty, tmp_path), monkeypatch, capsys)
    assert code == 2 and "no track folders in" in one_error_line(err, "train")
    missing = tmp_path / "nowhere"
    code, err = run_entry_point("train", train_args(missing, tmp_path), monkeypatch, capsys)
    assert code == 2 and "does not exist" in one_error_line(err, "train")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["model=simple_demucsx"], "unknown model 'simple_demucsx' (no conf/model/"),
        (["loss=l2"], "unknown loss 'l2'"),
        (["callbacks=[default,nope]"], "unknown callbacks 'nope'"),
        (["module.optimzer.lr=1"], "unknown config key 'module.optimzer.lr'"),
        (["-m", "model=unet,nope"], "unknown model 'nope'"),
        (["model.channels=-3"], "model: RuntimeError"),
        (["augment=[", "x"], "error:"),
    ],
)
def test_unknown_config_names_and_keys_get_one_line(argv, expected, monkeypatch, capsys, tmp_path):
    argv = [*argv, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    code, err = run_entry_point("train", argv, monkeypatch, capsys)
    assert code == 2
    assert expected in one_error_line(err, "train")
    assert not (tmp_path / "sweep").exists()


def test_a_model_name_lists_the_choices(monkeypatch, capsys, tmp_path):
    code, err = run_entry_point("eval", ["model=hpss"], monkeypatch, capsys)
    line = one_error_line(err, "eval")
    assert "choose one of:" in line and "hpss_repet" in line and "simple_demucs" in line


def test_an_unwritable_run_folder_is_named(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = run_entry_point("train", [f"hydra.run.dir={blocker}/run"], monkeypatch, capsys)
    assert code == 2
    assert f"hydra.run.dir={blocker}/run: cannot write there" in one_error_line(err, "train")
    code, err = run_entry_point(
        "eval", ["model=hpss_repet", f"output_dir={blocker}/out"], monkeypatch, capsys
    )
    assert f"output_dir={blocker}/out: cannot write there" in one_error_line(err, "eval")


def test_checkpoints_that_are_missing_or_do_not_fit(tmp_path, monkeypatch, capsys):
    from tests.test_checkpoint import simple_demucs_checkpoint

    code, err = run_entry_point("train", ["ckpt_path=nope.ckpt"], monkeypatch, capsys)
    assert code == 2 and "ckpt_path=nope.ckpt: no checkpoint at" in one_error_line(err, "train")
    code, err = run_entry_point("eval", ["ckpt=nope.ckpt"], monkeypatch, capsys)
    assert code == 2 and "checkpoint not found: nope.ckpt" in one_error_line(err, "eval")
    # a checkpoint trained on other stems than the data's
    ckpt = simple_demucs_checkpoint(tmp_path / "four.ckpt")
    argv = [f"ckpt={ckpt}", "data.sources=[vocals,accompaniment]", f"output_dir={tmp_path}/e",
            f"paths.data_dir={tmp_path}/data"]  # fmt: skip
    code, err = run_entry_point("eval", argv, monkeypatch, capsys)
    line = one_error_line(err, "eval")
    assert "separates into ['drums', 'bass', 'other', 'vocals']" in line
    assert "['vocals', 'accompaniment']" in line


def test_resume_from_a_checkpoint_that_runs_code_is_refused(
    write_tree, tmp_path, monkeypatch, capsys
):
    from tests.test_checkpoint import CreatesFile

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    import torch

    torch.save({"state_dict": {}, "x": CreatesFile(marker)}, evil)
    root = write_tree({"train/A": {}, "train/B": {}})
    argv = train_args(root, tmp_path, "data.validation_tracks=[B]", f"ckpt_path={evil}")
    argv += ["model.channels=4", "trainer.accelerator=cpu", "data.segment=0.25"]
    code, err = run_entry_point("train", argv, monkeypatch, capsys)
    assert code == 2
    assert "evil.ckpt: refused: loading it would call" in one_error_line(err, "train")
    assert not marker.exists()


def test_eval_with_a_malicious_checkpoint_as_a_user_runs_it(tmp_path):
    """The report's scenario, end to end: `python eval.py ckpt=that.ckpt` runs nothing."""
    from tests.test_checkpoint import CreatesFile

    marker = tmp_path / "pwned"
    evil = tmp_path / "that.ckpt"
    import torch

    torch.save({"state_dict": {}, "hyper_parameters": {"x": CreatesFile(marker)}}, evil)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        [sys.executable, "eval.py", f"ckpt={evil}", f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert "that.ckpt: refused" in one_error_line(result.stderr, "eval")
    assert not marker.exists()


def test_hydra_full_error_keeps_the_traceback_for_developers(tmp_path, monkeypatch):
    from mss.errors import CheckpointError

    monkeypatch.setattr(sys, "argv", ["eval.py", "ckpt=nope.ckpt", f"output_dir={tmp_path}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(CheckpointError, match="checkpoint not found"):
            eval_script.main()
    finally:
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()


def test_eval_names_a_nan_in_a_reference(write_tree, tmp_path, monkeypatch, capsys):
    bad = noise(0.5)
    bad[0, 4410] = np.nan
    root = write_tree({"test/Song": {"drums": bad}})
    argv = ["model=hpss_repet", "data=musdb18hq", f"data.root={root}", f"output_dir={tmp_path}"]
    code, err = run_entry_point("eval", argv, monkeypatch, capsys)
    assert code == 2
    assert "test/Song/drums.wav: NaN sample at 0.100 s" in one_error_line(err, "eval")


def test_a_bug_keeps_its_traceback(monkeypatch):
    from mss.cli import user_error_message

    assert user_error_message(KeyError("a bug")) is None
    assert user_error_message(ZeroDivisionError()) is None

"""SLURM through Hydra's submitit launcher: the sbatch script our config asks for, and the whole
job path (tasks -> one DDP world -> preempted -> requeued -> resumed) with submitit's local
executor, which runs the same pickled call in the same kind of tasks without a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mss.data.toy import track_names
from tests.test_cli import one_error_line, run_entry_point
from tests.test_train import script_overrides
from train import resolve_ckpt_path

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[slurm]")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("launcher", ["slurm", "slurm_local"])
def test_the_job_shape_follows_the_trainer(launcher):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"hydra/launcher={launcher}", "trainer.devices=3", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    job = cfg.hydra.launcher
    # submitit's local executor has one node; SLURM gets trainer.num_nodes
    assert (job.nodes, job.tasks_per_node, job.gpus_per_node) == (
        (2, 3, 3) if launcher == "slurm" else (1, 3, 3)
    )


def test_ckpt_path_auto_resumes_what_exists_and_else_starts_afresh(tmp_path):
    assert resolve_ckpt_path("auto", str(tmp_path)) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resolve_ckpt_path("auto", str(tmp_path)) == str(last)


def test_a_missing_launcher_names_the_extra_that_installs_it(tmp_path, monkeypatch, capsys):
    argv = ["-m", "hydra/launcher=slurmm", f"hydra.sweep.dir={tmp_path}"]
    code, err = run_entry_point("train", argv, monkeypatch, capsys)
    line = one_error_line(err, "train")
    assert code == 2 and "unknown hydra/launcher 'slurmm'" in line and "slurm_local" in line
    assert "pip install -e '.[slurm]'" in line


def fake_slurm(bin_dir: Path) -> None:
    """`srun` (submitit looks for it) and an `sbatch` that keeps the script and refuses it."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "sbatch: error: kept by the test" >&2\nexit 1\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def test_the_sbatch_script_asks_for_one_process_per_gpu(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path / "bin")
    script = tmp_path / "job.sh"
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_CAPTURE", str(script))
    argv = ["-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2",
            "trainer.devices=4", "ckpt_path=auto", "hydra.launcher.partition=gpu",
            "hydra.launcher.account=lab", "hydra.launcher.timeout_min=600",
            "hydra.launcher.mem_gb=200", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    code, err = run_entry_point("train", argv, monkeypatch, capsys)
    assert code != 0 and "kept by the test" in err  # submitted, and nothing ran
    flags = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    for expected in ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                     "--account=lab", "--time=600", "--mem=200GB", "--signal=USR2@120",
                     "--requeue", "--cpus-per-task=8", "--job-name=train"]:  # fmt: skip
        assert f"#SBATCH {expected}" in flags, flags
    command = script.read_text().splitlines()[-1]
    # srun starts nodes x ntasks-per-node copies of the pickled Hydra job: the DDP ranks
    assert command.startswith("srun ") and "-m submitit.core._submit" in command


@pytest.mark.slow
def test_a_preempted_two_task_job_requeues_and_resumes_from_last_ckpt(
    tiny_musdb_root, tmp_path, monkeypatch, capsys
):
    sweep = tmp_path / "sweep"
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the tasks import train and tests.helpers
    argv = [
        "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep}", "ckpt_path=auto",
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
        "data.samples_per_epoch=8",  # batch 2 on each of 2 ranks: 2 steps
        "callbacks.last_checkpoint.every_n_train_steps=1",
        # SIGUSR2 before step 2 in both tasks, as SLURM signals all tasks of a job
        "+callbacks.preempt._target_=tests.helpers.SignalOnce", "+callbacks.preempt.step=1",
        f"+callbacks.preempt.marker={tmp_path / 'signalled'}",
    ]  # fmt: skip
    overrides = script_overrides(tiny_musdb_root, [track_names("train", 4)[-1]], tmp_path)
    overrides = [o for o in overrides if not o.startswith("data.samples_per_epoch")]
    code, err = run_entry_point("train", argv[:1] + overrides + argv[1:], monkeypatch, capsys)
    logs = {p.name: p.read_text() for p in sweep.glob(".submitit/*/*_log.*")}
    assert code == 0, err[-3000:] + "\n".join(f"{k}:\n{v[-3000:]}" for k, v in logs.items())

    rank0 = next(v for k, v in logs.items() if k.endswith("_0_log.out"))
    rank0_err = next(v for k, v in logs.items() if k.endswith("_0_log.err"))
    assert "this job is preempted" in rank0 and "Requeued job" in rank0
    assert "Starting with JobEnvironment" in rank0.rsplit("Requeued job", 1)[1]  # ran again
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in rank0_err
    # one DDP world of two processes: 8 chunks, batch 2 per rank, 2 optimizer steps
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]
    assert [p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")] == ["0"]

"""Callbacks that tests add to real runs: `+callbacks.<name>._target_=tests.helpers.<Name>`."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL the training process once `step` optimizer steps are done, before any checkpoint
    callback could save that step: the worst case for a crash between two checkpoints."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonBatch(Callback):
    """Put a NaN into the training batch of step `step` (as a corrupt chunk would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            mix, stems = batch
            stems[0, 0, 0, 0] = torch.nan


class SignalOnce(Callback):
    """Send `signum` (default SIGUSR2, what SLURM sends before preempting or ending a submitit
    job) to this process before training step `step`, once per rank: a file
    `<marker>.<rank>` remembers it across the requeued run, which resumes before that step."""

    def __init__(self, step: int, marker: str, signum: int = signal.SIGUSR2) -> None:
        self.step, self.marker, self.signum = step, marker, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        marker = f"{self.marker}.{trainer.global_rank}"
        if trainer.global_step == self.step and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), self.signum)


class FailFirstRuns(Callback):
    """Fail the first runs that load this callback, one way each, in the order of `failures`:
    `nan_loss` puts a NaN into the first training batch (the NaN guard stops the run), `oom`
    raises torch's out-of-memory error. The file `counter` counts the runs across a sweep."""

    def __init__(self, counter: str, failures: list[str]) -> None:
        self.counter, self.failures = counter, list(failures)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != 0 or batch_idx != 0:
            return
        runs = int(open(self.counter).read()) if os.path.exists(self.counter) else 0
        with open(self.counter, "w") as file:
            file.write(str(runs + 1))
        failure = self.failures[runs] if runs < len(self.failures) else None
        if failure == "nan_loss":
            batch[1][0, 0, 0, 0] = torch.nan
        elif failure == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

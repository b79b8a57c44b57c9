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

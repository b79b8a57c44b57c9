"""One log line per validation: the record of a run that survives nohup, SLURM and CI logs.

The progress bars redraw a terminal line and print nothing when stdout is not a terminal, so a
batch job's log would otherwise hold no trace of how training went. The line goes through
Python logging, hence to the console and to Hydra's `<run dir>/train.log`.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

log = logging.getLogger(__name__)


class EpochSummary(L.Callback):
    """After each validation: epoch, step, wall and CPU time, the mean training loss since the
    previous validation, learning rate, `val/loss`, and `val/sdr` with its per-source values."""

    def __init__(self) -> None:
        # summed on the loss's device: a float() per step would sync a GPU every step
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0
        self._wall0 = self._cpu0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._steps += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        log.info(self.summary(trainer))
        self._loss_sum, self._steps = None, 0

    def summary(self, trainer: L.Trainer) -> str:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        wall = (time.perf_counter() - self._wall0) / 60
        cpu = (time.process_time() - self._cpu0) / 60
        parts = [f"epoch {trainer.current_epoch} step {trainer.global_step}"]
        parts.append(f"{wall:.1f} min wall, {cpu:.1f} min CPU")
        if self._steps:
            parts.append(f"train/loss {float(self._loss_sum) / self._steps:.4g}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if "val/loss" in metrics:
            parts.append(f"val/loss {metrics['val/loss']:.4g}")
        if "val/sdr" in metrics:
            per_source = [
                f"{key.removeprefix('val/sdr_')} {value:.2f}"
                for key, value in metrics.items()
                if key.startswith("val/sdr_")
            ]
            parts.append(f"val/sdr {metrics['val/sdr']:.2f} dB ({', '.join(per_source)})")
        return " | ".join(parts)

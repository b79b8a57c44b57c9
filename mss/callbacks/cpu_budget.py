"""Stop training when the process has used a fixed amount of CPU time.

`trainer.max_time` counts wall-clock time, which a busy machine stretches: two runs given the
same 30 minutes get different amounts of compute when anything else shares the cores. A CPU-time
budget makes model comparisons on CPU fair. It counts every thread of the training process
(`time.process_time`), so set `data.num_workers=0` to have data loading counted too; worker
processes are not. `trainer.min_epochs` still holds. Under DDP each rank checks its own time
and any rank over budget stops all.

A run stopped by the budget ends with a validation, as it does when it validates every epoch,
also under `trainer.check_val_every_n_epoch` > 1: otherwise up to n-1 epochs of training are
never validated and cannot become the best checkpoint.
"""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)


class CPUTimeBudget(L.Callback):
    def __init__(self, max_cpu_seconds: float) -> None:
        if max_cpu_seconds <= 0:
            raise ValueError(f"max_cpu_seconds must be positive, got {max_cpu_seconds}")
        self.max_cpu_seconds = float(max_cpu_seconds)
        self._start: float | None = None
        self.used_before = 0.0  # CPU seconds of earlier runs of this fit, restored on resume

    @property
    def used(self) -> float:
        """CPU seconds spent on this fit so far, resumed runs included."""
        running = 0.0 if self._start is None else time.process_time() - self._start
        return self.used_before + running

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        over = self.used >= self.max_cpu_seconds
        over = trainer.strategy.reduce_boolean_decision(over, all=False)
        if over and not trainer.should_stop:
            trainer.should_stop = True
            # Lightning validates on a stop request only in an epoch that validates anyway
            if trainer.check_val_every_n_epoch is not None:
                trainer.check_val_every_n_epoch = 1
            log.info(
                "CPU time budget of %.0f s reached after %d steps (%.0f s used); stopping",
                self.max_cpu_seconds, trainer.global_step, self.used,
            )  # fmt: skip

    def state_dict(self) -> dict:
        return {"used": self.used}

    def load_state_dict(self, state_dict: dict) -> None:
        self.used_before = float(state_dict["used"])

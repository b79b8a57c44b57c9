"""Stop training at the first NaN or Inf, before it reaches the weights or a checkpoint.

A non-finite loss or gradient means the run has diverged (learning rate, a missing gradient
clip, a bad batch); Adam would write NaN into every weight on the next step and every later
checkpoint, `last.ckpt` included, would be worthless. Skipping such batches instead would hide
a diverging run behind a counter, so the guard stops it and names the step and the last good
checkpoint to resume from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from mss.errors import NonFiniteError


def _finite(tensors: list[Tensor]) -> bool:
    """Whether every element of every tensor is finite, in one reduction."""
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)  # NaN or Inf in a tensor makes its norm so
    return bool(torch.isfinite(torch.stack(norms).sum()))


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """The most recent checkpoint file the run's ModelCheckpoint callbacks wrote."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths += [callback.last_model_path, callback.best_model_path]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


class NonFiniteGuard(Callback):
    """Raise `NonFiniteError` when the loss or a gradient is NaN/Inf, before the optimizer step.

    Under DDP the decision is reduced over ranks so that all of them stop together. Gradients
    are not checked under a float16 GradScaler, which expects Inf now and then and skips those
    steps itself. Checkpoints with non-finite weights are refused as well.
    """

    def __init__(self) -> None:
        self._loss: Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        what = None
        if self._loss is not None and not bool(torch.isfinite(self._loss)):
            what = f"loss ({float(self._loss)})"
        elif getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if not _finite(grads):
                what = "gradient"
        if trainer.strategy.reduce_boolean_decision(what is not None, all=False):
            raise NonFiniteError(self.message(trainer, what or "loss or gradient on another rank"))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        weights = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
        if not _finite(weights):
            raise NonFiniteError(self.message(trainer, "weights"))

    @staticmethod
    def message(trainer: L.Trainer, what: str) -> str:
        last = last_checkpoint(trainer)
        resume = (
            f"the last good checkpoint is {last} (resume with ckpt_path={last})"
            if last
            else "no checkpoint was written yet"
        )
        return (
            f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"training stopped and the weights were not updated with it; {resume}; lower "
            "module.optimizer.lr, keep trainer.gradient_clip_val, or check the data"
        )

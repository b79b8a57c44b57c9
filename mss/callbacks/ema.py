"""Exponential moving average (EMA) of the weights, used for validation, checkpoints and use.

After every optimizer step `ema = d * ema + (1 - d) * weights`, with the decay warmed up as
`d_t = min(decay, (1 + t) / (10 + t))` so that early averages are not dominated by the random
initial weights (the warm-up of Demucs and of ema-pytorch). Validation runs on the EMA weights,
and checkpoints store them as the network's `state_dict`, so `eval.py`, `separate.py`,
`export.py` and `load_separator` use them with nothing to configure. The raw training weights
travel in this callback's state and are put back when training resumes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

_PREFIX = "net."


class EMA(Callback):
    """Keep an EMA of the separator's floating-point parameters and buffers.

    Args:
        decay: the decay after warm-up, in [0, 1); 0.999 averages about the last 1000 steps.
        warmup: use the `(1 + t) / (10 + t)` warm-up of the decay.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.ema: dict[str, Tensor] | None = None
        self._raw: dict[str, Tensor] | None = None  # training weights while the EMA is in
        self._raw_from_checkpoint: dict[str, Tensor] | None = None
        self._module: L.LightningModule | None = None

    # --- averaging ---------------------------------------------------------------------------

    @staticmethod
    def _weights(pl_module: L.LightningModule) -> dict[str, Tensor]:
        return {
            name: tensor
            for name, tensor in pl_module.net.state_dict(keep_vars=True).items()
            if tensor.is_floating_point()
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._module = pl_module
        if self._raw_from_checkpoint is not None:
            # resumed: the network holds the EMA from the checkpoint's state_dict; training
            # goes on from the raw weights
            self.ema = {}
            with torch.no_grad():
                for name, tensor in self._weights(pl_module).items():
                    self.ema[name] = tensor.detach().clone()
                    tensor.copy_(self._raw_from_checkpoint[name])
            self._raw_from_checkpoint = None
        if self.ema is None:
            self.ema = {n: t.detach().clone() for n, t in self._weights(pl_module).items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.ema is None or trainer.global_step == self.updates:
            return  # no optimizer step was taken (gradient accumulation)
        weight = 1 - self.current_decay()
        with torch.no_grad():
            names = list(self.ema)
            current = self._weights(pl_module)
            torch._foreach_lerp_(
                [self.ema[n] for n in names], [current[n].detach() for n in names], weight
            )
        self.updates = trainer.global_step

    # --- validation on the EMA ---------------------------------------------------------------

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        if self.ema is None or self._raw is not None:
            return
        weights = self._weights(pl_module)
        with torch.no_grad():
            self._raw = {n: t.detach().clone() for n, t in weights.items()}
            for name, tensor in weights.items():
                tensor.copy_(self.ema[name])

    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._raw is None:
            return
        with torch.no_grad():
            for name, tensor in self._weights(pl_module).items():
                tensor.copy_(self._raw[name])
        self._raw = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    # --- checkpoints: the EMA is the network, the raw weights ride along --------------------

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.ema is None:
            return
        state = checkpoint["state_dict"]
        for name, tensor in self.ema.items():
            state[_PREFIX + name] = tensor.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        if self._raw is not None:  # saved during validation: the raw weights are aside
            raw = {n: t.clone() for n, t in self._raw.items()}
        elif self._module is not None:
            raw = {n: t.detach().clone() for n, t in self._weights(self._module).items()}
        else:
            raw = None
        return {"decay": self.decay, "updates": self.updates, "raw": raw}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict["updates"])
        self._raw_from_checkpoint = state_dict.get("raw")

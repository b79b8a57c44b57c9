"""Random generator states in checkpoints, so a resumed run draws what the uninterrupted run
would have (augmentation gains, channel swaps and sign flips come from torch's global
generator).

Lightning saves no generator state. The states are kept as tensors and plain tuples, which
`torch.load(weights_only=True)` reads, and put back at the start of the first training epoch
after the restore: after the sanity check and the loaders Lightning sets up on resume, which
draw from the generator, and before the epoch's loader is iterated, as in the run that wrote
the checkpoint. A run resumed mid-epoch gets them back when training starts (its loader is set
up by then), before its next batch is augmented.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def capture() -> dict[str, Any]:
    state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGState(Callback):
    """Save the global generators' states with every checkpoint; restore them on resume."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resumed mid-epoch, Lightning calls no on_train_epoch_start before the next batch
        if trainer.fit_loop.restarted_mid_epoch:
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            restore(self._pending)
            self._pending = None

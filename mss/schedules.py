"""Learning-rate schedules over a training horizon: linear warm-up, then cosine decay.

The horizon is either a number of optimizer steps or, for runs stopped by a CPU-time budget
(`mss.callbacks.cpu_budget.CPUTimeBudget`), the fraction of the budget used, so that the decay
ends where the budget does however fast the machine is. `SeparationModule` fills in whichever
the run has (`total_steps` from the trainer, `progress` from the budget) when the config leaves
them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    total_steps: int | None = None,
    progress: Callable[[], float] | None = None,
) -> LambdaLR:
    """Linear warm-up from `lr / warmup_steps` to `lr` over `warmup_steps` steps, then a cosine
    from `lr` down to `min_lr_ratio * lr` at the end of the horizon (and flat after it).

    Args:
        optimizer: its learning rates are the peaks.
        warmup_steps: steps of linear warm-up (0: none).
        min_lr_ratio: the final learning rate as a fraction of the peak, in [0, 1].
        total_steps: the horizon in optimizer steps (warm-up included).
        progress: the horizon as a fraction in [0, 1] read when the scheduler steps (the CPU
            budget used); takes precedence over `total_steps` after the warm-up.
    Step it every optimizer step (`interval: step`).
    """
    if warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
        raise ValueError(
            f"need warmup_steps >= 0, 0 <= min_lr_ratio <= 1: {warmup_steps}, {min_lr_ratio}"
        )
    if total_steps is None and progress is None:
        raise ValueError("warmup_cosine needs a horizon: total_steps or progress")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if progress is not None:
            done = progress()
        else:
            decay_steps = max(1, total_steps - warmup_steps)
            done = (step - warmup_steps) / decay_steps
        done = min(max(done, 0.0), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))

    return LambdaLR(optimizer, factor)

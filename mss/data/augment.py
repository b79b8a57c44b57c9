"""Training augmentations: small modules on ``stems [B, S, C, T]`` (after demucs ``augment.py``).

Each acts only in training mode (``module.train()``) and returns stems of the same shape;
the caller rebuilds the mixture as ``stems.sum(1)`` afterwards, so mixture and targets can
never disagree. Randomness comes from torch's global generator on the stems' device (seeded by
``lightning.seed_everything``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _check(stems: Tensor) -> None:
    if stems.dim() != 4:
        raise ValueError(
            "Expected 4D tensor with dimensions (batch, sources, channels, frames). "
            f"Found: {tuple(stems.shape)}"
        )


class RandomGain(nn.Module):
    """Scale each source of each example by a gain drawn uniformly in ``[min_gain, max_gain]``.

    Per-source gains change the balance of the mixture: the model sees stems at levels the
    dataset does not have (open-unmix ``_augment_gain``).
    """

    def __init__(self, min_gain: float = 0.25, max_gain: float = 1.25):
        super().__init__()
        if not 0 <= min_gain <= max_gain:
            raise ValueError(f"need 0 <= min_gain <= max_gain, got {min_gain}, {max_gain}")
        self.min_gain = min_gain
        self.max_gain = max_gain

    def forward(self, stems: Tensor) -> Tensor:
        _check(stems)
        if not self.training:
            return stems
        b, s = stems.shape[:2]
        gain = torch.rand(b, s, 1, 1, device=stems.device, dtype=stems.dtype)
        return stems * (self.min_gain + (self.max_gain - self.min_gain) * gain)


class ChannelSwap(nn.Module):
    """Swap left and right of each source of each example with probability ``p``.

    Per source, so the stereo image of the mixture changes too. No-op on mono.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, stems: Tensor) -> Tensor:
        _check(stems)
        if not self.training or stems.shape[2] != 2:
            return stems
        b, s = stems.shape[:2]
        swap = torch.rand(b, s, 1, 1, device=stems.device) < self.p
        return torch.where(swap, stems.flip(2), stems)


class SignFlip(nn.Module):
    """Multiply each source of each example by -1 with probability ``p`` (inaudible alone,
    but it changes how sources add up in the mixture)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, stems: Tensor) -> Tensor:
        _check(stems)
        if not self.training:
            return stems
        b, s = stems.shape[:2]
        flip = torch.rand(b, s, 1, 1, device=stems.device) < self.p
        return torch.where(flip, -stems, stems)


def compose(augments: Iterable[nn.Module] | None) -> nn.Sequential:
    """Chain augmentations in order; ``None`` or empty gives the identity."""
    return nn.Sequential(*(augments or ()))

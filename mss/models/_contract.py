"""The input check every separator shares: `forward(mix[B, C, T]) -> stems[B, S, C, T]`."""

from __future__ import annotations

from torch import Tensor


def check_mix(mix: Tensor, audio_channels: int) -> None:
    """Raise a clear ValueError unless `mix` is `[batch, audio_channels, frames >= 1]`."""
    if mix.ndim != 3:
        raise ValueError(
            "Expected 3D tensor with dimensions (batch, channel, frames). "
            f"Found: {tuple(mix.shape)}"
        )
    if mix.shape[1] != audio_channels:
        raise ValueError(
            f"Expected {audio_channels} audio channels, found {mix.shape[1]} "
            f"(input shape {tuple(mix.shape)})."
        )
    if mix.shape[-1] < 1:
        raise ValueError(f"Expected at least one frame. Found: {tuple(mix.shape)}")

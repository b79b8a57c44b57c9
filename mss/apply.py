"""Chunked overlap-add inference: separate tracks of any length with bounded memory.

Long tracks do not fit through a network at once (demucs#231, #498), so the mixture is cut into
segments that overlap, each segment is separated on its own, and the results are cross-faded with
a trapezoidal window (linear ramps over the overlap, flat in between) and divided by the summed
window. Because of that normalisation a pointwise model gives exactly its unchunked result, and a
model with a finite receptive field gives it away from the segment borders.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["separate", "transition_window"]


def transition_window(length: int, ramp: int) -> Tensor:
    """Trapezoidal weights `[length]`: linear ramps of `ramp` samples at both ends, 1 in between.

    The weights are strictly positive (the ramps start at `1 / (ramp + 1)`), so every sample of a
    segment counts and the normalisation by the summed weights never divides by zero. When two
    ramps would overlap (`ramp > length / 2`) the window becomes a triangle.
    """
    index = torch.arange(length, dtype=torch.float32)
    rise = (index + 1) / (ramp + 1)
    fall = (length - index) / (ramp + 1)
    return torch.clamp(torch.minimum(rise, fall), max=1.0)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")  # DSP separators have no parameters


def _run(model: nn.Module, chunks: Tensor, device: torch.device) -> Tensor:
    """Separate `chunks[N, C, L]` on `device`; returns `[N, S, C, L]` on the CPU."""
    out = model(chunks.to(device))
    if out.dim() != 4 or out.shape[0] != chunks.shape[0] or out.shape[2:] != chunks.shape[1:]:
        raise ValueError(
            f"{type(model).__name__} returned shape {tuple(out.shape)} for input "
            f"{tuple(chunks.shape)}; the separator contract is mix[B, C, T] -> stems[B, S, C, T] "
            "with the same B, C and T"
        )
    return out.float().cpu()


def separate(
    model: nn.Module,
    mix: Tensor | np.ndarray,
    segment: float | None,
    overlap: float,
    sample_rate: int,
    batch_size: int = 1,
    device: str | torch.device | None = None,
) -> Tensor:
    """Separate full tracks with weighted overlap-add over segments.

    Args:
        model: a separator, `model(mix[B, C, L]) -> stems[B, S, C, L]`, already in the mode
            (eval) the caller wants; it is moved to `device` when one is given.
        mix: `[B, C, T]` or `[C, T]` mixture, any T >= 1.
        segment: segment length in seconds; None (or a segment at least as long as the track)
            separates the whole track in one call.
        overlap: fraction of a segment shared with the next one, in [0, 1).
        sample_rate: the mixture's sample rate; must equal `model.sample_rate` when the model
            has one, since a separator run at the wrong rate gives plausible-looking garbage.
        batch_size: segments per forward call.
        device: where the model runs (default: where its parameters are). Segments go there one
            batch at a time; results come back to the CPU, so device memory holds only a batch.

    Returns:
        `[B, S, C, T]` float32 on the CPU (`[S, C, T]` when `mix` was `[C, T]`).
    """
    model_rate = getattr(model, "sample_rate", None)
    if model_rate is not None and int(model_rate) != int(sample_rate):
        raise ValueError(
            f"{type(model).__name__} works at {model_rate} Hz but the mixture is at "
            f"{sample_rate} Hz; resample the data or use a model trained at {sample_rate} Hz"
        )
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if segment is not None and segment <= 0:
        raise ValueError(f"segment must be a positive number of seconds or None, got {segment}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    mix = torch.as_tensor(mix)
    unbatched = mix.dim() == 2
    if unbatched:
        mix = mix[None]
    if mix.dim() != 3 or mix.shape[-1] < 1:
        raise ValueError(
            "Expected 2D (channel, frames) or 3D (batch, channel, frames) mixture with at least "
            f"one frame. Found: {tuple(mix.shape)}"
        )
    mix = mix.float().cpu()
    if device is not None:
        model.to(device)
    run_device = torch.device(device) if device is not None else _model_device(model)
    batch, channels, length = mix.shape

    seg = length if segment is None else max(1, int(round(segment * sample_rate)))
    with torch.inference_mode():
        if seg >= length:
            parts = range(0, batch, batch_size)
            out = torch.cat([_run(model, mix[i : i + batch_size], run_device) for i in parts])
        else:
            out = _overlap_add(model, mix, seg, overlap, batch_size, run_device)
    # A clone made outside inference mode is an ordinary tensor that callers may edit in place.
    out = out.clone()
    return out[0] if unbatched else out


def _overlap_add(
    model: nn.Module, mix: Tensor, seg: int, overlap: float, batch_size: int, device: torch.device
) -> Tensor:
    """Separate `mix[B, C, T]` in segments of `seg` samples (`seg < T`); returns `[B, S, C, T]`."""
    batch, channels, length = mix.shape
    ramp = min(int(round(overlap * seg)), seg - 1)
    hop = seg - ramp
    # Pad by the ramp length at both ends: the first and last real samples then fall in the
    # flat part of a window instead of on a ramp that only one segment covers, and the input
    # past the track borders is zeros as when the track is separated in one piece.
    n_chunks = max(1, math.ceil((length + 2 * ramp - seg) / hop) + 1)
    padded_length = (n_chunks - 1) * hop + seg
    padded = torch.nn.functional.pad(mix, (ramp, padded_length - length - ramp))
    window = transition_window(seg, ramp)

    out: Tensor | None = None
    weight = torch.zeros(padded_length)
    for k in range(n_chunks):
        weight[k * hop : k * hop + seg] += window
    # (item, chunk) pairs flattened so that batch_size counts segments whatever B is.
    jobs = [(b, k) for b in range(batch) for k in range(n_chunks)]
    for start in range(0, len(jobs), batch_size):
        group = jobs[start : start + batch_size]
        chunks = torch.stack([padded[b, :, k * hop : k * hop + seg] for b, k in group])
        estimates = _run(model, chunks, device)
        if out is None:
            out = torch.zeros(batch, estimates.shape[1], channels, padded_length)
        for (b, k), estimate in zip(group, estimates, strict=True):
            out[b, :, :, k * hop : k * hop + seg] += estimate * window
    out = out / weight
    return out[..., ramp : ramp + length]

"""Multichannel Wiener filtering of spectrogram estimates (the open-unmix / norbert EM).

Given non-negative magnitude estimates of every source and the complex mixture STFT, each
iteration re-estimates per source a power spectral density ``v_j(f, n)`` (the estimate's
power averaged over channels) and a spatial covariance matrix per frequency
``R_j(f) = sum_n y_j y_j^H / (eps + sum_n v_j)``, models the mixture covariance
``C_x = sum_j v_j R_j + sqrt(eps) I`` and separates again with the multichannel Wiener gains
``y_j = v_j R_j C_x^-1 x``. Algorithm and constants follow open-unmix's
``openunmix/filtering.py`` (``wiener`` with ``softmask=False, residual=False`` and
``expectation_maximization``), written with complex tensors instead of real/imaginary pairs,
and batched; for stereo, the common case, the 2x2 algebra is written out per TF point. As
there, the inputs are scaled down for numerical stability and the algorithm runs in double
precision.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mss.models._precision import autocast_off


def wiener(
    magnitudes: Tensor,
    mix: Tensor,
    iterations: int = 1,
    eps: float = 1e-10,
    scale_factor: float = 10.0,
) -> Tensor:
    """Refine magnitude estimates into complex source STFTs.

    Args:
        magnitudes (Tensor): [shape=(batch, sources, channels, bins, frames)] non-negative
            magnitude estimates.
        mix (Tensor): [shape=(batch, channels, bins, frames)] complex mixture STFT.
        iterations (int): EM iterations; 0 returns the magnitudes with the mixture phase.
        eps (float): energy of the white noise the model leaves out; regularises the
            covariances.
        scale_factor (float): the mixture is divided by ``max(1, max|mix| / scale_factor)``
            during the iterations (open-unmix's stabilisation).

    Returns:
        Tensor: [shape=(batch, sources, channels, bins, frames)] complex source STFTs, in
        the dtype of ``mix``.
    """
    if (
        magnitudes.ndim != 5
        or mix.ndim != 4
        or magnitudes.shape[:1] + magnitudes.shape[2:] != mix.shape
    ):
        raise ValueError(
            "Expected magnitudes (batch, sources, channels, bins, frames) and a mixture "
            f"(batch, channels, bins, frames) that agree. Found: {tuple(magnitudes.shape)} "
            f"and {tuple(mix.shape)}"
        )
    # The EM runs in float64, which autocast leaves alone; it is off here all the same, so
    # that the filter's precision never depends on the caller's context.
    with autocast_off(mix.device.type):
        return _wiener(magnitudes, mix, iterations, eps, scale_factor)


def _wiener(
    magnitudes: Tensor, mix: Tensor, iterations: int, eps: float, scale_factor: float
) -> Tensor:
    out_dtype = mix.dtype
    y = torch.polar(magnitudes.double(), mix.angle().double()[:, None])
    if iterations <= 0:
        return y.to(out_dtype)

    x = mix.to(torch.complex128)
    scale = (x.abs().amax(dim=(1, 2, 3), keepdim=True) / scale_factor).clamp_min(1.0)
    x = x / scale
    y = y / scale[:, None]

    em_step = _em_step_stereo if x.shape[1] == 2 else _em_step
    for _ in range(iterations):
        y = em_step(y, x, eps)
    return (y * scale[:, None]).to(out_dtype)


def _em_step(y: Tensor, x: Tensor, eps: float) -> Tensor:
    """One EM iteration for any number of channels: y [B, S, C, F, N], x [B, C, F, N]."""
    channels = x.shape[1]
    regularization = math.sqrt(eps) * torch.eye(channels, dtype=x.dtype, device=x.device)
    xp = x.permute(0, 2, 1, 3)  # [B, F, C, N]
    v = y.abs().square().mean(dim=2)  # [B, S, F, N]
    yp = y.permute(0, 1, 3, 2, 4)  # [B, S, F, C, N]
    # Spatial covariance per source and bin: [B, S, F, C, C].
    R = yp @ yp.conj().transpose(-1, -2)
    R = R / (eps + v.sum(dim=-1))[..., None, None]
    # Mixture covariance per TF point, sum_j v_j R_j, as one matmul over sources:
    # [B, F, N, S] @ [B, F, S, C*C] -> [B, F, N, C, C].
    batch, sources, bins, frames = v.shape
    Cxx = v.to(x.dtype).permute(0, 2, 3, 1) @ R.reshape(batch, sources, bins, -1).transpose(1, 2)
    Cxx = Cxx.reshape(batch, bins, frames, channels, channels) + regularization
    # Cxx^-1 x per TF point: [B, F, C, N].
    inv_x = (torch.linalg.inv(Cxx) @ xp.transpose(-1, -2)[..., None])[..., 0].transpose(-1, -2)
    # y_j = v_j R_j (Cxx^-1 x): applying the gain to x without forming it.
    return (v.to(x.dtype)[:, :, :, None] * (R @ inv_x[:, None])).permute(0, 1, 3, 2, 4)


def _em_step_stereo(y: Tensor, x: Tensor, eps: float) -> Tensor:
    """``_em_step`` for two channels, written out per TF point: the same algebra without the
    batched 2x2 matmuls and inverses and the copies their layouts need, which cost more
    than the arithmetic (benchmarks/bench_wiener.py)."""
    y0, y1 = y[:, :, 0], y[:, :, 1]  # [B, S, F, N]
    v = (y0.abs().square() + y1.abs().square()) / 2
    # Spatial covariance per source and bin, [B, S, F, 1]: R = [[r00, r01], [conj(r01), r11]].
    norm = (eps + v.sum(dim=-1, keepdim=True)).to(x.dtype)
    r00 = (y0 * y0.conj()).sum(dim=-1, keepdim=True) / norm
    r11 = (y1 * y1.conj()).sum(dim=-1, keepdim=True) / norm
    r01 = (y0 * y1.conj()).sum(dim=-1, keepdim=True) / norm
    r10 = (y1 * y0.conj()).sum(dim=-1, keepdim=True) / norm
    # Mixture covariance sum_j v_j R_j + sqrt(eps) I per TF point, [B, F, N].
    v = v.to(x.dtype)
    regularization = math.sqrt(eps)
    c00 = (v * r00).sum(dim=1) + regularization
    c01 = (v * r01).sum(dim=1)
    c10 = (v * r10).sum(dim=1)
    c11 = (v * r11).sum(dim=1) + regularization
    det = c00 * c11 - c01 * c10
    x0, x1 = x[:, 0], x[:, 1]
    inv_x0 = ((c11 * x0 - c01 * x1) / det)[:, None]  # Cxx^-1 x, [B, 1, F, N]
    inv_x1 = ((c00 * x1 - c10 * x0) / det)[:, None]
    # y_j = v_j R_j (Cxx^-1 x)
    return torch.stack([v * (r00 * inv_x0 + r01 * inv_x1), v * (r10 * inv_x0 + r11 * inv_x1)], 2)

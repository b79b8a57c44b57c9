"""Multichannel Wiener filtering of spectrogram estimates (the open-unmix / norbert EM).

Given non-negative magnitude estimates of every source and the complex mixture STFT, each
iteration re-estimates per source a power spectral density ``v_j(f, n)`` (the estimate's
power averaged over channels) and a spatial covariance matrix per frequency
``R_j(f) = sum_n y_j y_j^H / (eps + sum_n v_j)``, models the mixture covariance
``C_x = sum_j v_j R_j + sqrt(eps) I`` and separates again with the multichannel Wiener gains
``y_j = v_j R_j C_x^-1 x``. Algorithm and constants follow open-unmix's
``openunmix/filtering.py`` (``wiener`` with ``softmask=False, residual=False`` and
``expectation_maximization``), written with complex tensors and ``einsum`` instead of
real/imaginary pairs, and batched. As there, the inputs are scaled down for numerical
stability and the algorithm runs in double precision.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mss.models._precision import autocast_off


def _inverse(m: Tensor) -> Tensor:
    """Inverse of a batch of small matrices [..., C, C]; closed form for C = 2.

    Millions of 2x2 inversions (one per TF point) are several times faster written out than
    through ``torch.linalg.inv``'s batched LU.
    """
    if m.shape[-1] != 2:
        return torch.linalg.inv(m)
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return (
        torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / det[..., None, None]
    )


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

    channels = x.shape[1]
    regularization = math.sqrt(eps) * torch.eye(channels, dtype=x.dtype, device=x.device)
    xp = x.permute(0, 2, 1, 3)  # [B, F, C, N]
    for _ in range(iterations):
        v = y.abs().square().mean(dim=2)  # [B, S, F, N]
        yp = y.permute(0, 1, 3, 2, 4)  # [B, S, F, C, N]
        # Spatial covariance per source and bin: [B, S, F, C, C].
        R = yp @ yp.conj().transpose(-1, -2)
        R = R / (eps + v.sum(dim=-1))[..., None, None]
        # Mixture covariance per TF point, sum_j v_j R_j, as one matmul over sources:
        # [B, F, N, S] @ [B, F, S, C*C] -> [B, F, N, C, C].
        batch, sources, bins, frames = v.shape
        Cxx = v.to(x.dtype).permute(0, 2, 3, 1) @ R.reshape(batch, sources, bins, -1).transpose(
            1, 2
        )
        Cxx = Cxx.reshape(batch, bins, frames, channels, channels) + regularization
        # Cxx^-1 x per TF point: [B, F, C, N].
        inv_x = (_inverse(Cxx) @ xp.transpose(-1, -2)[..., None])[..., 0].transpose(-1, -2)
        # y_j = v_j R_j (Cxx^-1 x): applying the gain to x without forming it.
        y = (v.to(x.dtype)[:, :, :, None] * (R @ inv_x[:, None])).permute(0, 1, 3, 2, 4)
    return (y * scale[:, None]).to(out_dtype)

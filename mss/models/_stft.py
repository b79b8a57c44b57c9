"""The one STFT/iSTFT pair the spectrogram models share.

Hann window, ``center=True`` with zero padding (reflect padding fails on inputs shorter than
half a window, and the separator contract accepts any length), no normalisation. With a hop
of at most a quarter of the window, ``istft(stft(x), length=T)`` gives back ``x`` to float
precision (tested), so a mask of ones is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _window(n_fft: int, reference: Tensor) -> Tensor:
    return torch.hann_window(n_fft, device=reference.device, dtype=reference.dtype)


def stft(x: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Complex STFT over the last axis.

    Args:
        x (Tensor): [shape=(..., frames)] real signal.
        n_fft (int): FFT size (and window length).
        hop_length (int): hop in samples.

    Returns:
        Tensor: [shape=(..., n_fft // 2 + 1, 1 + frames // hop_length)] complex.
    """
    shape = x.shape
    # torch.stft has no half-precision CPU kernel and loses too much in fp16 on GPU.
    x = x.reshape(-1, shape[-1])
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    z = torch.stft(
        x,
        n_fft,
        hop_length,
        window=_window(n_fft, x),
        center=True,
        pad_mode="constant",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return z.reshape(*shape[:-1], *z.shape[-2:])


def istft(z: Tensor, n_fft: int, hop_length: int, length: int) -> Tensor:
    """Inverse of :func:`stft`.

    Args:
        z (Tensor): [shape=(..., n_fft // 2 + 1, stft_frames)] complex.
        n_fft (int): FFT size used by :func:`stft`.
        hop_length (int): hop used by :func:`stft`.
        length (int): number of samples to return (the original signal length).

    Returns:
        Tensor: [shape=(..., length)] real.
    """
    shape = z.shape
    z = z.reshape(-1, *shape[-2:])
    x = torch.istft(
        z,
        n_fft,
        hop_length,
        window=_window(n_fft, z.real),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return x.reshape(*shape[:-2], length)

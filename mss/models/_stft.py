"""The one STFT/iSTFT pair the spectrogram models share.

Hann window, ``center=True`` with zero padding (reflect padding fails on inputs shorter than
half a window, and the separator contract accepts any length), no normalisation. With a hop
of at most a quarter of the window, ``istft(stft(x), length=T)`` gives back ``x`` to float
precision (tested), so a mask of ones is the identity.

Both run with autocast off and cast half-precision input to float32, also inside a
mixed-precision step (``trainer.precision=bf16-mixed|16-mixed``): torch.stft has no
half-precision CPU kernel and loses too much in fp16 on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mss.models._precision import autocast_off


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
    x = x.reshape(-1, shape[-1])
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    with autocast_off(x.device.type):
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
    if z.dtype == torch.complex32:
        z = z.to(torch.complex64)
    with autocast_off(z.device.type):
        if torch.compiler.is_exporting():
            x = _istft_by_fold(z, n_fft, hop_length, length)
        else:
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


def _istft_by_fold(z: Tensor, n_fft: int, hop_length: int, length: int) -> Tensor:
    """`torch.istft` as irfft + windowed overlap-add (`F.fold`) / summed squared window.

    Used only while exporting (`mss.export`): ONNX has no inverse STFT and torch.onnx no
    translation for `aten::istft`, but it translates these ops. It equals `torch.istft` to
    float rounding (tests/test_export.py); eager code keeps `torch.istft`, which is about twice
    as fast on CPU.

    Args:
        z (Tensor): [shape=(batch, n_fft // 2 + 1, stft_frames)] complex.
    Returns:
        Tensor: [shape=(batch, length)] real.
    """
    frames = torch.fft.irfft(z, n=n_fft, dim=-2)  # [batch, n_fft, stft_frames]
    window = _window(n_fft, frames)
    count = z.shape[-1]
    fold = {
        "output_size": (1, n_fft + hop_length * (count - 1)),
        "kernel_size": (1, n_fft),
        "stride": (1, hop_length),
    }
    y = F.fold(frames * window[:, None], **fold)[:, 0, 0]
    envelope = F.fold((window * window)[None, :, None].expand(1, n_fft, count), **fold)[0, 0, 0]
    # center=True: drop the n_fft // 2 samples of padding in front; zeros past the last frame,
    # as torch.istft
    start = n_fft // 2
    y = y[:, start : start + length] / envelope[start : start + length]
    return F.pad(y, (0, length - y.shape[-1]))

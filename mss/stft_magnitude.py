"""``sum |STFT(x)|`` per row with a hand-written backward: the loss's spectral term.

``torch.stft(...).abs().sum()`` is differentiable as it stands, but its backward on CPU costs
three times its forward (an ``as_strided`` scatter for the overlapping frames, a full complex
FFT for the real FFT's adjoint, and several complex temporaries). The adjoint written out is
one inverse real FFT of ``S / |S|`` per frame, the window, and an overlap-add: the same values
(tests/test_losses.py compares both the sum and the gradient with torch's autograd) at a
fraction of the time (BENCHMARKS.md).

Conventions are ``torch.stft``'s with ``center=True, pad_mode="reflect", normalized=True,
onesided=True``: a window shorter than ``n_fft`` is zero-padded on both sides to ``n_fft``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def stft_magnitude_sum(signal: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """``torch.stft(signal, ..., normalized=True).abs().sum(dims=(-2, -1))``, ``[rows]``.

    Args:
        signal (Tensor): [shape=(rows, frames)] real signals, at least ``n_fft // 2 + 1`` long.
        n_fft (int): FFT size.
        hop (int): hop between frames.
        window (Tensor): [shape=(win_length,)] with ``win_length <= n_fft``.
    """
    left = (n_fft - window.shape[-1]) // 2
    window = F.pad(window, (left, n_fft - window.shape[-1] - left))
    # the reflect padding keeps torch's autograd (its backward is cheap); the frames do not
    padded = F.pad(signal.unsqueeze(1), (n_fft // 2, n_fft // 2), mode="reflect").squeeze(1)
    return _FramedMagnitudeSum.apply(padded, n_fft, hop, window)


class _FramedMagnitudeSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, padded: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
        frames = padded.unfold(-1, n_fft, hop) * window  # [rows, n_frames, n_fft]
        spec = torch.fft.rfft(frames, norm="ortho")
        magnitude = spec.abs()
        ctx.save_for_backward(spec, magnitude, window)
        ctx.n_fft, ctx.hop, ctx.length = n_fft, hop, padded.shape[-1]
        ctx.consumed = False
        return magnitude.sum(dim=(-2, -1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        if ctx.consumed:
            raise RuntimeError("stft_magnitude_sum's backward reuses its buffers: run it once")
        ctx.consumed = True
        spec, magnitude, window = ctx.saved_tensors
        n_fft, hop = ctx.n_fft, ctx.hop
        # In place on the saved buffers: every fresh tensor of this size costs page faults
        # comparable to the arithmetic on it.
        # d|z|/dz is z/|z|, and 0 at 0 as torch's abs (z is 0 there, so any positive floor
        # gives it); real factors first, then one complex multiply.
        scale = magnitude.clamp_min_(torch.finfo(magnitude.dtype).tiny).reciprocal_()
        scale.mul_(grad[:, None, None])
        # The adjoint of the one-sided real FFT: every bin but DC and Nyquist stands for two
        # conjugate bins of the full spectrum, which irfft counts twice.
        last = n_fft // 2 if n_fft % 2 == 0 else n_fft // 2 + 1
        scale[..., 1:last] *= 0.5
        frame_grad = torch.fft.irfft(spec.mul_(scale), n=n_fft, norm="ortho").mul_(window)
        return _overlap_add(frame_grad, hop, ctx.length), None, None, None


def _overlap_add(frames: Tensor, hop: int, length: int) -> Tensor:
    """Sum frames ``[rows, n_frames, n_fft]`` placed every ``hop`` into ``[rows, length]``."""
    rows, n_frames, n_fft = frames.shape
    if n_fft % hop:
        out = F.fold(
            frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, n_fft),
            stride=(1, hop),
        )  # fmt: skip
        return out.reshape(rows, length)
    # hop divides n_fft: n_fft / hop strided adds of whole hops
    per_frame = n_fft // hop
    out = frames.new_zeros(rows, n_frames + per_frame - 1, hop)
    pieces = frames.reshape(rows, n_frames, per_frame, hop)
    for k in range(per_frame):
        out[:, k : k + n_frames] += pieces[:, :, k]
    out = out.reshape(rows, -1)
    return F.pad(out, (0, length - out.shape[-1]))

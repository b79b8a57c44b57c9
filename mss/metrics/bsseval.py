"""Fast BSSEval v4 in torch: museval's images mode with whole-track distortion filters.

This computes what SiSEC 2018 computes with `museval.evaluate(references, estimates, win, hop)`
(`museval.metrics.bss_eval(..., framewise_filters=False, bsseval_sources_version=False)`), in
float64 on the CPU or a GPU, and returns the same numbers (see `tests/test_bsseval.py` and
`benchmarks/bench_bsseval.py` for the measured agreement).

What museval does, and what is done here instead to make it fast:

1. Distortion filters. For every estimate channel, the least-squares filters (512 taps) that
   rebuild it from all channels of all references (`C`, interference filters), and from the
   channels of its own reference only (`Cj`, spatial filters), fitted once on the whole track.
   The normal equations' matrix `G` is the Gram matrix of the delayed reference channels; it is
   the same for every estimate. museval builds it with one full-length FFT per pair of channels
   and solves a dense `(S*C*512)^2` system once per estimate (4 x a 4096 x 4096 LU for four
   stereo stems). Here the correlations at the 512 lags are accumulated over short FFT blocks
   for all pairs at once, and the system is solved once for all estimates with the block
   Levinson recursion: `G` is exactly block Toeplitz (delay-major order, `S*C` x `S*C` blocks),
   which brings the solve from O((S C L)^3) to O(L^2 (S C)^3). One step of iterative refinement
   (residual from an FFT block-Toeplitz product) keeps the error at a dense solver's level.
2. Per-frame decomposition. For each frame museval convolves the frame of every reference
   (zero-padded by 511 samples, nothing from outside the frame) with the filters, splits the
   estimate into `s_true + e_spat + e_interf + e_artif` and takes energy ratios. Here every
   frame of every channel is FFT'd once, the projections are formed in the frequency domain for
   all frames and estimates in one batched product, and the energies come from Parseval's
   identity, so no inverse FFT is needed. Frames are processed in chunks to bound memory.
3. SDR. In images mode `e_spat + e_interf + e_artif = estimate - reference` exactly, so the
   per-frame SDR does not depend on the filters: it is the framewise SNR
   `10 log10(sum s^2 / sum (s_hat - s)^2)` over the frame and all channels. It is computed that
   way for every call, and `sdr_only=True` skips the filters altogether. museval evaluates the
   same sum after adding and subtracting the projections, so the two differ only by rounding
   (below 1e-9 dB on the tests here); the one case where they part is an estimate equal to its
   reference in a frame: +inf here, a large finite number from museval's rounding residue.

Silence, as museval defines it (`museval.metrics._any_source_silent`): a source is silent in a
span when the sum over its channels is zero at every sample of it. A frame where any reference
or any estimate is silent is NaN for every source and metric. A source silent over the whole
track makes museval raise (sigsep-mus-eval#94); here that source is NaN in every frame, a
warning names the track and the source, and the other sources are scored without it: exactly
what museval gives when run on the remaining sources (the same rule as
`mss.metrics.museval_backend.run_protocol`, so both backends agree).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.fft
import torch

__all__ = ["FILTERS_LEN", "METRICS", "bss_eval_images", "evaluate_track", "framewise_sdr"]

FILTERS_LEN = 512
"""Distortion filter length in taps (museval's `filters_len` default, used by SiSEC18)."""

METRICS = ("SDR", "ISR", "SIR", "SAR")

# museval adds machine epsilon to the diagonal of G before solving; so does this module.
_EPS = float(np.finfo(float).eps)

# Relative residual above which the Levinson solution is refined (a backward-stable dense solve
# leaves about 1e-14 on the Gram matrices of music; Levinson about 1e-13).
_RESIDUAL_TOL = 1e-10

# FFT length of the segments over which the lag correlations are accumulated when the frames
# cannot serve (overlapping or very short frames): long enough that the zero padding by
# FILTERS_LEN - 1 costs little, short enough to stay in cache.
_CORR_NFFT = 16384

# Frames per chunk in the per-frame stage: bounds the temporaries (about 25 MB per one-second
# frame of four stereo stems) while keeping the batched products large.
_FRAME_CHUNK = 8


def evaluate_track(
    references: np.ndarray | torch.Tensor,
    estimates: np.ndarray | torch.Tensor,
    sources: Sequence[str],
    win: int,
    hop: int,
    sdr_only: bool = False,
    device: str | torch.device | None = None,
    track_name: str = "",
) -> dict[str, dict[str, np.ndarray]]:
    """BSSEval v4 per-frame metrics of one track, as `museval.evaluate(refs, ests, win, hop)`.

    Args:
        references: `[S, T, C]` (museval's layout), any float dtype; scored in float64.
        estimates: `[S, T', C]`; padded with zeros or cut to `T` as museval does.
        sources: the S source names, in order.
        win, hop: frame length and hop in samples (SiSEC18: one second each). Frames start at
            `k * hop` and only whole frames are scored (museval's `Framing`): `(T - win + hop) //
            hop` frames, or one frame over the whole track when `win >= T`.
        sdr_only: compute SDR only (the framewise SNR; no distortion filters).
        device: torch device for the computation (default CPU).
        track_name: named in the warning about sources silent over the whole track.

    Returns:
        `scores[source][metric] -> float64 [frames]` (numpy) with metrics SDR, ISR, SIR, SAR, or
        SDR only. NaN in frames where any reference or estimate is silent, and in every frame of
        a source whose reference or estimate is silent over the whole track (with a warning).

    Raises:
        ValueError: on arrays that are not `[S, T, C]` with matching S and C, an empty
            reference, or a number of source names other than S.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    refs = _as_tensor(references)
    ests = _as_tensor(estimates)
    if refs.ndim != 3 or ests.ndim != 3:
        raise ValueError(
            "Expected references and estimates of shape (sources, frames, channels). Found: "
            f"{tuple(refs.shape)} and {tuple(ests.shape)}"
        )
    if refs.shape[0] != ests.shape[0] or refs.shape[2] != ests.shape[2]:
        raise ValueError(
            f"references {tuple(refs.shape)} and estimates {tuple(ests.shape)} differ in their "
            "number of sources or channels"
        )
    if refs.shape[1] == 0 or refs.shape[2] == 0:
        raise ValueError(f"references are empty: {tuple(refs.shape)}")
    sources = list(sources)
    if len(sources) != refs.shape[0]:
        raise ValueError(f"{len(sources)} source names for {refs.shape[0]} sources")
    if win < 1 or hop < 1:
        raise ValueError(f"win and hop must be positive sample counts, got {win} and {hop}")

    # museval's layout [S, T, C] -> [S, C, T] so that frames are contiguous in memory.
    refs = refs.to(device=device, dtype=torch.float64).transpose(1, 2).contiguous()
    ests = _pad_or_truncate(ests.to(device=device, dtype=torch.float64).transpose(1, 2), refs)

    length = refs.shape[-1]
    n_frames = num_frames(length, win, hop)
    metrics = ("SDR",) if sdr_only else METRICS
    out = np.full((len(metrics), len(sources), n_frames), np.nan)

    silent_ref, silent_est = _silent(refs), _silent(ests)
    dead = silent_ref | silent_est
    where = f"track {track_name!r}" if track_name else "this track"
    for j in torch.nonzero(dead).flatten().tolist():
        which = "reference" if silent_ref[j] else "estimate"
        warnings.warn(
            f"{where}: the {which} of source {sources[j]!r} is silent over the whole track; "
            "BSSEval cannot score it (sigsep-mus-eval#94), so its metrics are NaN and the other "
            "sources are scored without it",
            stacklevel=2,
        )
    alive = torch.nonzero(~dead).flatten()
    if len(alive):
        values = bss_eval_images(refs[alive], ests[alive], win, hop, sdr_only=sdr_only)
        out[:, alive.cpu().numpy()] = values.cpu().numpy()
    return {
        name: {metric: out[m, j].copy() for m, metric in enumerate(metrics)}
        for j, name in enumerate(sources)
    }


@torch.no_grad()
def bss_eval_images(
    references: torch.Tensor,
    estimates: torch.Tensor,
    win: int,
    hop: int,
    sdr_only: bool = False,
    filters_len: int = FILTERS_LEN,
) -> torch.Tensor:
    """museval's `bss_eval` (images mode, whole-track filters) on torch tensors.

    Args:
        references, estimates: float64 `[S, C, T]` on one device (note: channels before time),
            same shape; no source may be silent over the whole track (museval raises there).
        win, hop: frame length and hop in samples.
        sdr_only: return SDR only.
        filters_len: distortion filter length in taps.

    Returns:
        float64 `[4, S, frames]` (SDR, ISR, SIR, SAR in `METRICS` order), or `[1, S, frames]`
        when `sdr_only`; NaN in frames where any reference or estimate is silent.
    """
    n_src, n_chan, length = references.shape
    starts, frame_len = _frame_starts(length, win, hop)
    silent = _frames(references.sum(1), starts, frame_len).eq(0).all(-1).any(0)
    silent |= _frames(estimates.sum(1), starts, frame_len).eq(0).all(-1).any(0)
    signal, error = _frame_energies(references, estimates, starts, frame_len)
    sdr = _safe_db(signal, error)
    if sdr_only:
        return sdr[None].masked_fill(silent, math.nan)

    m = n_src * n_chan
    channels = torch.cat([references, estimates]).reshape(2 * m, length)
    # With hop == win the frames tile the track: their spectra serve both the whole-track
    # correlations (plus a last segment for the samples after the last frame) and the per-frame
    # decomposition, so every sample goes through one FFT only.
    shared = (len(starts) == 1 or hop == win) and frame_len >= filters_len - 1
    if shared:
        seg_len = frame_len
        nfft = _next_fast_len(frame_len + filters_len - 1)
    else:
        nfft = _CORR_NFFT if length + filters_len - 1 > _CORR_NFFT else None
        nfft = nfft or _next_fast_len(length + filters_len - 1)
        seg_len = min(length, nfft - filters_len + 1)
    spectra = _segment_spectra(channels, seg_len, nfft)  # [K, segments, 2m]
    corr = _lag_correlations(spectra, channels, m, seg_len, nfft, filters_len)  # [L, m, 2m]
    c_all, c_own = _distortion_filters(corr, n_src, n_chan)
    if shared:
        frame_spectra = spectra[:, : len(starts)]
    else:
        frame_spectra, nfft = None, _next_fast_len(frame_len + filters_len - 1)
    del spectra, corr
    isr, sir, sar = _frame_ratios(
        channels, frame_spectra, signal, c_all, c_own, starts, frame_len, nfft, n_src, n_chan
    )
    return torch.stack([sdr, isr, sir, sar]).masked_fill(silent, math.nan)


def framewise_sdr(
    references: torch.Tensor, estimates: torch.Tensor, win: int, hop: int
) -> torch.Tensor:
    """Per-frame SDR of images-mode BSSEval v4: the SNR over each frame and all channels.

    `10 log10(sum s^2 / sum (s_hat - s)^2)`, +inf where the error is exactly zero (museval's
    `_safe_db`). Silent frames are not masked here.

    Args:
        references, estimates: float64 `[S, C, T]`.
        win, hop: frame length and hop in samples (museval's framing).

    Returns:
        float64 `[S, frames]` in dB.
    """
    starts, frame_len = _frame_starts(references.shape[-1], win, hop)
    return _safe_db(*_frame_energies(references, estimates, starts, frame_len))


def num_frames(length: int, win: int, hop: int) -> int:
    """Number of frames museval's `Framing(win, hop, length)` yields."""
    return (length - win + hop) // hop if win < length else 1


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return torch.from_numpy(x)


def _pad_or_truncate(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Zero-pad or cut `estimates[S, C, T']` at the end to the length of `references`."""
    length = references.shape[-1]
    if estimates.shape[-1] >= length:
        return estimates[..., :length].contiguous()
    return torch.nn.functional.pad(estimates, (0, length - estimates.shape[-1])).contiguous()


def _silent(audio: torch.Tensor) -> torch.Tensor:
    """museval's silence test per source of `audio[S, C, T]` over the whole track: bool `[S]`."""
    return audio.sum(1).eq(0).all(-1)


def _frame_starts(length: int, win: int, hop: int) -> tuple[list[int], int]:
    """Start samples and length of museval's frames (all frames are whole)."""
    if win >= length:
        return [0], length
    return [k * hop for k in range(num_frames(length, win, hop))], win


def _frames(audio: torch.Tensor, starts: list[int], frame_len: int) -> torch.Tensor:
    """`audio[..., T]` -> `[..., frames, frame_len]` (a strided view, no copy)."""
    if len(starts) == 1:
        return audio[..., None, :frame_len]
    hop = starts[1] - starts[0]
    return audio[..., : starts[-1] + frame_len].unfold(-1, frame_len, hop)


def _safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """`10 log10(num / den)`, +inf where `den == 0` (museval's `_safe_db`)."""
    return torch.where(den == 0, math.inf, 10 * torch.log10(num / den))


def _frame_energies(
    references: torch.Tensor, estimates: torch.Tensor, starts: list[int], frame_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame and source, `sum s^2` and `sum (s_hat - s)^2` over the frame and channels.

    Returns two float64 `[S, frames]`.
    """
    signal = _frames(references, starts, frame_len).square().sum((1, 3))
    error = _frames(estimates - references, starts, frame_len).square().sum((1, 3))
    return signal, error


def _next_fast_len(n: int) -> int:
    """Smallest even `2^a 3^b 5^c >= n`: an FFT length pocketfft and cuFFT do quickly."""
    best = 2 ** math.ceil(math.log2(max(n, 2)))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n or size % 2:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _rfft(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """`torch.fft.rfft`, through scipy on the CPU.

    scipy's pocketfft does these batched real transforms about twice as fast as torch's CPU FFT
    here (measured on 2 cores), and threads over the batch.
    """
    if x.device.type != "cpu":
        return torch.fft.rfft(x, n=n, dim=dim)
    out = scipy.fft.rfft(x.numpy(), n=n, axis=dim, workers=torch.get_num_threads())
    return torch.from_numpy(out)


def _irfft(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """`torch.fft.irfft`, through scipy on the CPU (see `_rfft`)."""
    if x.device.type != "cpu":
        return torch.fft.irfft(x, n=n, dim=dim)
    out = scipy.fft.irfft(x.resolve_conj().numpy(), n=n, axis=dim, workers=torch.get_num_threads())
    return torch.from_numpy(out)


def _segment_spectra(channels: torch.Tensor, seg_len: int, nfft: int) -> torch.Tensor:
    """Spectra of consecutive segments tiling `channels[n, T]`, each zero-padded to `nfft`.

    Segment i covers samples `[i seg_len, (i + 1) seg_len)`; the last one may be shorter.

    Returns:
        complex128 `[nfft // 2 + 1, segments, n]` (frequency first: the products over channels
        below are batched over frequencies).
    """
    n, length = channels.shape
    n_full = length // seg_len
    n_seg = -(-length // seg_len)
    segments = channels[:, : n_full * seg_len].unflatten(-1, (n_full, seg_len))
    out = torch.empty(nfft // 2 + 1, n_seg, n, dtype=torch.complex128, device=channels.device)
    for start in range(0, n_full, _FRAME_CHUNK):
        stop = min(start + _FRAME_CHUNK, n_full)
        out[:, start:stop] = _rfft(segments[:, start:stop], nfft, -1).permute(2, 1, 0)
    if n_seg > n_full:
        out[:, n_full] = _rfft(channels[:, n_full * seg_len :], nfft, -1).T
    return out


def _lag_correlations(
    spectra: torch.Tensor,
    channels: torch.Tensor,
    m: int,
    seg_len: int,
    nfft: int,
    n_lags: int,
) -> torch.Tensor:
    """Whole-track lag correlations of the first `m` channels with all channels.

    `r[k, p, q] = sum_t x_p[t] x_q[t + k]` for `0 <= k < n_lags`, signals zero beyond T. The
    part of the sum within each segment comes from the segment spectra (`nfft >= seg_len +
    n_lags - 1`, so no lag wraps around); the pairs `(t, t + k)` that straddle a boundary
    between segments come from the `n_lags - 1` samples on either side of it, with small FFTs.
    Every segment but the last must be at least `n_lags - 1` long, so that no pair straddles
    two boundaries.

    Args:
        spectra: complex128 `[K, segments, n]` from `_segment_spectra(channels, seg_len, nfft)`.
        channels: float64 `[n, T]`.
        m: the correlations are between channels `[:m]` and all channels.

    Returns:
        float64 `[n_lags, m, n]`.
    """
    n, length = channels.shape
    n_freq = spectra.shape[0]
    cross = torch.empty(n_freq, m, n, dtype=spectra.dtype, device=spectra.device)
    # Sum over segments of conj(X_p) X_q for all pairs, batched over frequencies; in chunks of
    # frequencies to bound the copy that puts the contracted axis where the BLAS wants it.
    step = max(1, (1 << 22) // (spectra.shape[1] * n))
    for start in range(0, n_freq, step):
        part = spectra[start : start + step]
        cross[start : start + step] = part[:, :, :m].mH.contiguous() @ part
    corr = _irfft(cross, nfft, 0)[:n_lags]

    boundaries = torch.arange(seg_len, length, seg_len, device=channels.device)
    if len(boundaries):
        # Pairs across boundary o: t in [o - L + 1, o), t + k in [o, o + L - 1).
        offsets = torch.arange(n_lags - 1, device=channels.device)
        before = channels[:m, boundaries[:, None] - (n_lags - 1) + offsets]  # [m, B, L-1]
        index = boundaries[:, None] + offsets
        after = channels[:, index.clamp(max=length - 1)]  # [n, B, L-1], zero beyond T:
        after = after.masked_fill(index >= length, 0)
        size = 2 ** math.ceil(math.log2(2 * (n_lags - 1)))
        before_f = _rfft(before, size, -1).permute(2, 1, 0)  # [Kb, B, m]
        after_f = _rfft(after, size, -1).permute(2, 1, 0)  # [Kb, B, n]
        edge = _irfft(before_f.mH.contiguous() @ after_f, size, 0)  # [size, m, n]
        # corr_edge[k] = sum_i before[i] after[i + k - (L - 1)]: circular index k - (L - 1).
        lags = (torch.arange(n_lags, device=channels.device) - (n_lags - 1)) % size
        corr = corr + edge[lags]
    return corr


def _distortion_filters(
    corr: torch.Tensor, n_src: int, n_chan: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares distortion filters fitted on the whole track, for every estimate channel.

    Args:
        corr: float64 `[L, m, 2m]` from `_lag_correlations`, `m = S*C` reference channels
            `(j, cj)` then the estimate channels `(e, c)`, source-major.

    Returns:
        `c_all[L, m, m]`: museval's `C` for all estimates at once, the filters (taps first) from
        every reference channel (second axis) to every estimate channel (last axis);
        `c_own[S, L, C, C]`: museval's `Cj`, for each source the filters from its own
        reference's channels to its estimate's channels.
    """
    m = n_src * n_chan
    # Block k of the block-Toeplitz Gram matrix of the delayed references (delay-major order):
    # gram[k][p, q] = <x_p, x_q advanced by k>; museval's G after reordering its axes.
    gram = corr[:, :, :m].contiguous()
    gram[0].diagonal().add_(_EPS)
    # rhs[a][p, e] = <reference channel p delayed by a, estimate channel e>: museval's D.
    rhs = corr[:, :, m:].contiguous()
    c_all = _solve_block_toeplitz(gram, rhs)

    # Spatial filters: the same normal equations restricted to one source's own channels, for
    # all sources at once (a batch of Toeplitz systems with C x C blocks).
    own = range(n_src)
    gram = gram.unflatten(1, (n_src, n_chan)).unflatten(3, (n_src, n_chan))
    rhs = rhs.unflatten(1, (n_src, n_chan)).unflatten(3, (n_src, n_chan))
    gram_own = torch.stack([gram[:, j, :, j] for j in own])  # [S, L, C, C]
    rhs_own = torch.stack([rhs[:, j, :, j] for j in own])
    c_own = _solve_block_toeplitz(gram_own, rhs_own)
    return c_all, c_own


def _solve_block_toeplitz(blocks: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve `T x = y` for a symmetric positive definite block-Toeplitz T.

    Block Levinson recursion, checked by its residual: the recursion is only weakly stable, so
    when the residual is above what a backward-stable solve leaves (on the tracks measured it is
    not) one step of iterative refinement follows, and if that is not enough either (T
    singular to working precision), a dense LU solve as museval does it.

    Args:
        blocks: `[..., L, m, m]`, `T[i, j] = blocks[i - j]` for `i >= j` and
            `blocks[j - i]^T` above the diagonal.
        rhs: `[..., L, m, r]`.

    Returns:
        `x[..., L, m, r]`.
    """
    # An upper bound of ||T||_2 for the residual test.
    norm = blocks[..., 0, :, :].norm() + 2 * blocks[..., 1:, :, :].norm(dim=(-2, -1)).sum(-1)

    def accurate(x: torch.Tensor) -> tuple[bool, torch.Tensor]:
        residual = rhs - _block_toeplitz_matmul(blocks, x)
        bound = _RESIDUAL_TOL * (rhs.norm() + norm.max() * x.norm())
        return bool(torch.isfinite(x).all() and residual.norm() <= bound), residual

    with _single_thread(blocks.device):
        x = _block_levinson(blocks, rhs)
        ok, residual = accurate(x)
        if not ok and torch.isfinite(x).all():
            x = x + _block_levinson(blocks, residual)
            ok, _ = accurate(x)
    if not ok:
        dense = _dense_block_toeplitz(blocks)
        x = torch.linalg.solve(dense, rhs.flatten(-3, -2)).unflatten(-2, rhs.shape[-3:-1])
    return x


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run torch on one CPU thread inside the block.

    The Levinson recursion is a chain of about 20 small products per step; on the CPU, waking
    a second thread for each costs more than it saves (measured 3x slower with 2 threads).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _dense_block_toeplitz(blocks: torch.Tensor) -> torch.Tensor:
    """The block-Toeplitz matrix `[..., L m, L m]` of `_solve_block_toeplitz`."""
    n = blocks.shape[-3]
    i = torch.arange(n, device=blocks.device)
    lag = i[:, None] - i[None, :]
    full = blocks[..., lag.abs(), :, :]  # [..., L, L, m, m]
    upper = lag < 0
    full[..., upper, :, :] = full[..., upper, :, :].transpose(-1, -2)
    return full.transpose(-3, -2).flatten(-4, -3).flatten(-2, -1)


def _block_toeplitz_matmul(blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`T x` for the block-Toeplitz T of `_solve_block_toeplitz`, by FFT convolutions.

    `(T x)[i] = sum_{j <= i} R[i - j] x[j] + sum_{j > i} R[j - i]^T x[j]`: a causal block
    convolution with R plus an anti-causal one with R^T.
    """
    n = blocks.shape[-3]
    nfft = 2 ** math.ceil(math.log2(2 * n))
    causal = _rfft(blocks, nfft, -3) @ _rfft(x, nfft, -3)
    causal = _irfft(causal, nfft, -3)[..., :n, :, :]
    # Anti-causal part: reverse x in time, convolve with R^T at lags >= 1, reverse back.
    blocks_t = blocks.transpose(-1, -2).clone()
    blocks_t[..., 0, :, :] = 0
    anti = _rfft(blocks_t, nfft, -3) @ _rfft(x.flip(-3), nfft, -3)
    anti = _irfft(anti, nfft, -3)[..., :n, :, :].flip(-3)
    return causal + anti


def _block_levinson(blocks: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Block Levinson recursion for `T x = y` (T as in `_solve_block_toeplitz`).

    After step n, the forward and backward vectors f, b (n blocks of m x m) solve
    `T_n f = [I 0 .. 0]` and `T_n b = [0 .. 0 I]` for the leading n x n blocks of T, and x solves
    `T_n x = y[:n]`; step n + 1 extends all three with the prediction errors of row n + 1.
    O(L^2 m^3) operations instead of the O(L^3 m^3) of a dense factorisation, as products of
    m-column matrices with the n m-row history.
    """
    *batch, n_blocks, m, _ = blocks.shape
    r = rhs.shape[-1]
    eye = torch.eye(m, dtype=blocks.dtype, device=blocks.device)
    # The part of row n of T left of the diagonal, transposed and stacked by delay blocks:
    # rows [(L-1-n) m, (L-1) m) of `down` hold [R[n] ... R[1]]^T, rows [m, (n+1) m) of `up`
    # hold [R[1]^T ... R[n]^T]^T. Contiguous row ranges, so the products need no copies.
    down = blocks.flip(-3).transpose(-1, -2).reshape(*batch, n_blocks * m, m)
    up = blocks.reshape(*batch, n_blocks * m, m)
    # state rows: delay blocks; columns: [f | b | x].
    state = blocks.new_zeros(*batch, n_blocks * m, 2 * m + r)
    inv0 = torch.linalg.inv(blocks[..., 0, :, :])
    state[..., :m, :m] = inv0
    state[..., :m, m : 2 * m] = inv0
    state[..., :m, 2 * m :] = inv0 @ rhs[..., 0, :, :]
    zeros = blocks.new_zeros(*batch, m, 2 * m)
    for n in range(1, n_blocks):
        nm = n * m
        errors = down[..., (n_blocks - 1 - n) * m : (n_blocks - 1) * m, :].mT @ state[..., :nm, :]
        ef, ex = errors[..., :m], errors[..., 2 * m :]
        eb = up[..., m : nm + m, :].mT @ state[..., :nm, m : 2 * m]
        a = torch.linalg.inv(eye - eb @ ef)
        d = torch.linalg.inv(eye - ef @ eb)
        # [f_new b_new] = [f; 0] [a, -eb d] + [0; b] [-ef a, d]
        new_fb = torch.cat([state[..., :nm, :m] @ torch.cat([a, -eb @ d], -1), zeros], -2)
        new_fb[..., m:, :] += state[..., :nm, m : 2 * m] @ torch.cat([-ef @ a, d], -1)
        state[..., : nm + m, : 2 * m] = new_fb
        state[..., : nm + m, 2 * m :] += new_fb[..., m:] @ (rhs[..., n, :, :] - ex)
    return state[..., 2 * m :].unflatten(-2, (n_blocks, m))


def _frame_ratios(
    channels: torch.Tensor,
    spectra: torch.Tensor | None,
    signal: torch.Tensor,
    c_all: torch.Tensor,
    c_own: torch.Tensor,
    starts: list[int],
    frame_len: int,
    nfft: int,
    n_src: int,
    n_chan: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ISR, SIR, SAR per frame from museval's decomposition of each framed estimate.

    As in museval's `_bss_decomp_mtifilt`, each frame of the references (nothing from outside
    the frame) is zero-padded by L-1 samples and filtered: `p_own` (own reference through
    `c_own`) and `p_all` (all references through `c_all`); with `s` the padded reference frame
    and `e` the padded estimate frame, `e_spat = p_own - s`, `e_interf = p_all - p_own`,
    `e_artif = e - p_all`. Energies are summed over the L-1 longer frame and all channels, here
    in the frequency domain (Parseval; `nfft >= frame_len + L - 1`, so nothing wraps around).

    Args:
        channels: float64 `[2m, T]`, the reference channels then the estimate channels.
        spectra: complex128 `[K, frames, 2m]` spectra of the frames at `nfft`, or None to
            compute them here.
        signal: `[S, frames]` reference energy per frame (the ISR numerator).
        c_all, c_own: from `_distortion_filters`.
        starts, frame_len: museval's frames.

    Returns:
        isr, sir, sar: float64 `[S, frames]` in dB.
    """
    m = n_src * n_chan
    n_freq = nfft // 2 + 1
    # Parseval for a real signal from its half spectrum: interior bins count twice.
    weight = torch.full((n_freq,), 2.0 / nfft, dtype=torch.float64, device=channels.device)
    weight[0] = 1.0 / nfft
    weight[-1] = 1.0 / nfft if nfft % 2 == 0 else 2.0 / nfft

    h_all = _rfft(c_all, nfft, 0)  # [K, m(ref), m(est)]
    # Own-source filters as a block-diagonal matrix, so both projections are one product each.
    h_own = torch.zeros_like(h_all)
    h_own_blocks = _rfft(c_own, nfft, 1)  # [S, K, C, C]
    for j in range(n_src):
        own = slice(j * n_chan, (j + 1) * n_chan)
        h_own[:, own, own] = h_own_blocks[j]

    def energy(z: torch.Tensor) -> torch.Tensor:
        # Weighted sum over frequencies of |z|^2, then over each source's channels:
        # [K, F, m] complex -> [S, F].
        parts = torch.view_as_real(z).reshape(n_freq, -1)
        power = (weight @ (parts * parts)).reshape(z.shape[1], n_src, n_chan * 2)
        return power.sum(-1).T

    frames = _frames(channels, starts, frame_len)  # [2m, F, frame_len]
    out = []
    for start in range(0, len(starts), _FRAME_CHUNK):
        stop = min(start + _FRAME_CHUNK, len(starts))
        if spectra is None:
            z = _rfft(frames[:, start:stop], nfft, -1).permute(2, 1, 0)
        else:
            z = spectra[:, start:stop]
        ref, est = z[..., :m], z[..., m:]
        p_all = ref @ h_all  # [K, F, m(est)]
        p_own = ref @ h_own
        out.append(
            torch.stack(
                [
                    _safe_db(signal[:, start:stop], energy(p_own - ref)),
                    _safe_db(energy(p_own), energy(p_all - p_own)),
                    _safe_db(energy(p_all), energy(est - p_all)),
                ]
            )
        )
    isr, sir, sar = torch.cat(out, -1)
    return isr, sir, sar

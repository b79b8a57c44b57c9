"""Fast BSSEval v4 in torch: museval's images mode with whole-track distortion filters.

This computes what SiSEC 2018 computes with `museval.evaluate(references, estimates, win, hop)`
(`museval.metrics.bss_eval(..., framewise_filters=False, bsseval_sources_version=False)`), in
float64 on the CPU or a GPU, and gives the same numbers wherever float64 determines them
(`tests/test_bsseval.py` and `benchmarks/bench_bsseval.py` measure the agreement, with museval
and with an exact long-double BSSEval, `tests/bsseval_reference.py`). It never imports museval.

What museval does:

1. For every estimate channel, the least-squares distortion filters (512 taps) that rebuild it
   from all channels of all references (`C`) and from the channels of its own reference only
   (`Cj`), fitted once on the whole track. The normal equations' matrix `G` is the Gram matrix
   of the delayed reference channels, the same for every estimate.
2. For each frame, the frames of the references (zero-padded by 511 samples; nothing from
   outside the frame) are convolved with the filters: `p_own` (own reference through `Cj`) and
   `p_all` (all references through `C`); with `s` and `e` the padded reference and estimate
   frames, `e_spat = p_own - s`, `e_interf = p_all - p_own`, `e_artif = e - p_all`, and
   SDR = |s|^2 / |e - s|^2, ISR = |s|^2 / |e_spat|^2, SIR = |p_own|^2 / |e_interf|^2,
   SAR = |p_all|^2 / |e_artif|^2 in dB, energies summed over the frame and all channels.

How it is made fast here:

- Everything in step 2 is an inner product between filtered frames, so it is a bilinear form
  in the frame's lag correlations `r_f[k, p, q] = sum_t x_p[t] y_q[t + k]` (`|k| < 512`,
  signals cut to the frame) with coefficients that are correlations of the filters. One pass
  over the track computes `r_f` for every frame from short FFT blocks (cache-sized, for all
  channel pairs at once); the metrics are then one small matrix product. No signal is ever
  filtered, and nothing the size of the track is held besides the inputs.
- When the frames tile the track (hop == win, SiSEC18), the whole-track correlations that
  make `G` and the right-hand sides are the sum of the frames' plus the pairs that straddle a
  frame boundary (and the samples after the last frame), so the same pass serves both.
- `G` is exactly block Toeplitz (delay-major order, blocks of `S*C` channels): the filters for
  all estimates come from one block Levinson recursion, O(L^2 (S C)^3) instead of museval's
  dense 4096 x 4096 LU per estimate. Levinson is only weakly stable, so it runs in the channel
  basis that makes `G`'s diagonal block the identity and its solution is checked by iterative
  refinement, with a dense Cholesky solve where that does not converge (`_bsseval_toeplitz`).
  Checking the residual alone was not enough: on the toy set, whose stems are panned mono parts
  (two channels equal up to 16-bit rounding), Levinson's filters were 10-100 % off with a
  residual of 5e-11, and SIR moved by up to 8.6 dB (museval was right there, to 2e-6 dB).
- SDR. In images mode `e_spat + e_interf + e_artif = e - s`, so the per-frame SDR does not
  depend on the filters: it is the framewise SNR `10 log10(sum s^2 / sum (s_hat - s)^2)` over
  the frame and all channels, computed that way in every call; `sdr_only=True` skips the
  filters. museval evaluates the same sum after adding and subtracting the projections, so
  the two differ by rounding only (below 1e-13 dB on the benchmark tracks). This holds in
  images mode whatever the filters (also with museval's `framewise_filters=True`, v3), not in
  the `bsseval_sources_version=True` mode, whose SDR is `|s + e_spat|^2 / |e_interf +
  e_artif|^2`.

Where this departs from museval:

- Values above about 100 dB (an estimate equal to its reference up to rounding) are rounding
  noise in museval and here alike; this module returns +inf where an error energy is exactly
  zero or cancels to below zero.
- References linearly dependent at the 512 lags to float64 precision: where `G` (or a source's
  own block) has a condition number above `COND_LIMIT` = 1e15, e.g. synthetic tones with no
  noise floor, or identical references, the least-squares filters are not determined by the
  signals in float64, and museval's ISR/SIR/SAR are rounding noise (a change of one unit in the
  last place of the references moves them by decibels; `tests/test_bsseval.py`). Here such a
  system is solved with a Tikhonov term, `(G + RIDGE * trace(G) I) x = D`, `RIDGE` = 1e-12,
  which bounds its condition number by 1e12: a well-defined answer (the same to 1e-5 dB after
  that change of the input, and equal to the exact solution of the regularised equations), but
  not museval's, and a warning names the sources affected. SDR does not depend on the filters.
  Below the limit, condition numbers up to about 1e13 (tonal stems whose only broadband content
  is 16-bit quantisation noise) still give museval's numbers and the exact ones within 1e-3 dB.

Silence, as museval defines it (`museval.metrics._any_source_silent`): a source is silent in a
span when the sum over its channels is zero at every sample of it. A frame where any reference
or any estimate is silent is NaN for every source and metric. A source silent over the whole
track makes museval raise (sigsep-mus-eval#94); here that source is NaN in every frame, a
warning names the track and the source, and the other sources are scored without it: exactly
what museval gives when run on the remaining sources (the rule of
`mss.metrics.protocol.run_protocol`, so both backends agree).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft
import torch

from mss.metrics._bsseval_toeplitz import COND_LIMIT, EPS, solve_block_toeplitz
from mss.metrics.protocol import METRICS, check_track_shapes, num_frames

__all__ = ["FILTERS_LEN", "bss_eval_images", "bss_eval_track"]

FILTERS_LEN = 512
"""Distortion filter length in taps (museval's `filters_len` default, used by SiSEC18)."""

# Samples per chunk of the pass over the track: about 8 MB of float64 for 8 stereo channels,
# so that a chunk and its block spectra stay in the cache.
_CHUNK_SAMPLES = 1 << 16

# FFT length of the correlation blocks: blocks of `_BLOCK_NFFT - 511` samples extended by 511.
# 2048 to 4096 measured alike; shorter costs more padding, longer more inverse transforms.
_BLOCK_NFFT = 2560


def bss_eval_track(
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
        `scores[source][metric] -> float64 [frames]` (numpy) with metrics SDR, SIR, ISR, SAR, or
        SDR only. NaN in frames where any reference or estimate is silent, and in every frame of
        a source whose reference or estimate is silent over the whole track (with a warning).
        A warning also names the sources whose distortion filters had to be regularised (see
        the module doc: their ISR/SIR/SAR are not museval's, which are rounding noise there).

    Raises:
        ValueError: on arrays that are not `[S, T, C]` with matching S and C, an empty
            reference, a number of source names other than S, or a non-positive win or hop.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    refs = _as_tensor(references)
    ests = _as_tensor(estimates)
    check_track_shapes(refs.shape, ests.shape)
    if refs.shape[1] == 0 or refs.shape[2] == 0:
        raise ValueError(f"references are empty: {tuple(refs.shape)}")
    sources = list(sources)
    if len(sources) != refs.shape[0]:
        raise ValueError(f"{len(sources)} source names for {refs.shape[0]} sources")
    if win < 1 or hop < 1:
        raise ValueError(f"win and hop must be positive sample counts, got {win} and {hop}")
    refs, ests = refs.to(device), ests.to(device)
    length = refs.shape[1]
    if ests.shape[1] >= length:
        ests = ests[:, :length]
    else:
        ests = torch.nn.functional.pad(ests, (0, 0, 0, length - ests.shape[1]))

    metrics = ("SDR",) if sdr_only else METRICS
    out = np.full((len(metrics), len(sources), num_frames(length, win, hop)), np.nan)
    starts, frame_len = _frame_starts(length, win, hop)
    with _cpu_workers(device) as workers:
        energies = _frame_energies(refs, ests, starts, frame_len, workers)
    silent_ref = _silent_sources(refs, energies[3][0])
    silent_est = _silent_sources(ests, energies[3][1])
    where = f"track {track_name!r}" if track_name else "this track"
    for j, name in enumerate(sources):
        if silent_ref[j] or silent_est[j]:
            which = "reference" if silent_ref[j] else "estimate"
            warnings.warn(
                f"{where}: the {which} of source {name!r} is silent over the whole track; "
                "BSSEval cannot score it (sigsep-mus-eval#94), so its metrics are NaN and the "
                "other sources are scored without it",
                stacklevel=2,
            )
    alive = [j for j in range(len(sources)) if not (silent_ref[j] or silent_est[j])]
    if alive:
        if len(alive) < len(sources):
            refs, ests = refs[alive], ests[alive]
            energies = tuple(e[:, alive] for e in energies[:3]) + (energies[3][:, :, alive],)
        with _cpu_workers(device) as workers:
            values, singular_all, singular_own = _bss_eval(
                refs, ests, starts, frame_len, energies, sdr_only, FILTERS_LEN, workers
            )
        out[:, alive] = values.cpu().numpy()
        names = [sources[j] for j in alive]
        _warn_singular(where, names, singular_all, singular_own)
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
        references, estimates: `[S, T, C]` (museval's layout), same shape, any float dtype,
            on the device to compute on; no source may be silent over the whole track (museval
            raises there). Computed in float64, chunk by chunk, without copying the inputs.
        win, hop: frame length and hop in samples.
        sdr_only: return SDR only.
        filters_len: distortion filter length in taps.

    Returns:
        float64 `[4, S, frames]` (SDR, SIR, ISR, SAR: `METRICS` order), or `[1, S, frames]`
        when `sdr_only`; NaN in frames where any reference or estimate is silent.
    """
    starts, frame_len = _frame_starts(references.shape[1], win, hop)
    with _cpu_workers(references.device) as workers:
        energies = _frame_energies(references, estimates, starts, frame_len, workers)
        values, singular_all, singular_own = _bss_eval(
            references, estimates, starts, frame_len, energies, sdr_only, filters_len, workers
        )
    names = [f"source {j}" for j in range(references.shape[0])]
    _warn_singular("these signals", names, singular_all, singular_own)
    return values


@torch.no_grad()
def _bss_eval(
    references: torch.Tensor,
    estimates: torch.Tensor,
    starts: list[int],
    frame_len: int,
    energies: tuple[torch.Tensor, ...],
    sdr_only: bool,
    filters_len: int,
    workers: int,
) -> tuple[torch.Tensor, bool, list[bool]]:
    """`bss_eval_images` given the frames, `_frame_energies`' output and CPU workers.

    Also returns which normal equations were singular and regularised: the joint one (all
    sources) and each source's own.
    """
    n_src, length, n_chan = references.shape
    m = n_src * n_chan
    signal, estimate, error = (e.flatten(-2) for e in energies[:3])  # [F, m]
    silent = energies[3].any(0).any(-1)  # [F]
    sdr = _safe_db(_by_source(signal, n_src), _by_source(error, n_src))
    if sdr_only:
        return sdr.T[None].masked_fill(silent, math.nan), False, [False] * n_src

    # Frames that tile the track give the whole-track correlations too (see the module doc).
    hop = starts[1] - starts[0] if len(starts) > 1 else frame_len
    tiled = hop == frame_len and frame_len >= filters_len - 1
    frame_corr = _scan(references, estimates, starts, frame_len, filters_len, workers)
    if tiled:
        corr = frame_corr.sum(0)
        tail = starts[-1] + frame_len
        boundaries = starts[1:] + ([tail] if tail < length else [])
    else:
        # Overlapping or very short frames: tile the track separately for the correlations.
        seg_len = max(frame_len, _BLOCK_NFFT)
        segs = list(range(0, length - seg_len + 1, seg_len))
        corr = frame_corr.new_zeros(filters_len, m, 2 * m)
        if segs:
            corr += _scan(references, estimates, segs, seg_len, filters_len, workers).sum(0)
        tail = len(segs) * seg_len
        boundaries = segs[1:] + ([tail] if segs and tail < length else [])
    if tail < length:
        corr += _scan(references, estimates, [tail], length - tail, filters_len, 1)[0]
    if boundaries and filters_len > 1:
        corr += _boundary_correlations(references, estimates, boundaries, filters_len)

    c_all, c_own, singular_all, singular_own = _distortion_filters(corr, n_src, n_chan)
    isr, sir, sar = _frame_ratios(frame_corr, signal, estimate, c_all, c_own, n_src)
    values = torch.stack([sdr, sir, isr, sar]).transpose(1, 2).masked_fill(silent, math.nan)
    return values, singular_all, singular_own


def _warn_singular(
    where: str, sources: list[str], singular_all: bool, singular_own: list[bool]
) -> None:
    """Say which sources' ISR/SIR/SAR come from regularised filters (see the module doc)."""
    if not singular_all and not any(singular_own):
        return
    if singular_all:
        which, metrics = "all references together", "SIR and SAR of every source"
    else:
        own = [s for s, flag in zip(sources, singular_own, strict=True) if flag]
        which, metrics = f"the channels of {own}", f"ISR and SIR of {own}"
    if singular_all and any(singular_own):
        metrics = "ISR, SIR and SAR"
    warnings.warn(
        f"{where}: {which} are linearly dependent at the {FILTERS_LEN} filter lags to float64 "
        f"precision (Gram matrix condition number above {COND_LIMIT:.0e}): museval's {metrics} "
        "can then be rounding noise; these come from regularised distortion filters (see "
        "mss.metrics.bsseval)",
        stacklevel=3,
    )


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    with warnings.catch_warnings():
        # Read-only arrays (np.broadcast_to, memory maps) are only ever read here.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(x)


def _silent_sources(audio: torch.Tensor, silent_frames: torch.Tensor) -> list[bool]:
    """museval's silence test per source of `audio[S, T, C]` over the whole track.

    Only sources silent in every frame (`silent_frames[F, S]`) can be; those are checked on
    all their samples, frames or not.
    """
    candidates = silent_frames.all(0).tolist()
    return [
        c and not bool(a.to(torch.float64).sum(-1).any())
        for a, c in zip(audio, candidates, strict=True)
    ]


def _frame_starts(length: int, win: int, hop: int) -> tuple[list[int], int]:
    """Start samples and length of museval's frames (all frames are whole)."""
    if win >= length:
        return [0], length
    return [k * hop for k in range(num_frames(length, win, hop))], win


def _safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """`10 log10(num / den)`, +inf where `den <= 0` (museval's `_safe_db` has `den == 0`)."""
    return torch.where(den <= 0, math.inf, 10 * torch.log10(num / den))


def _by_source(per_channel: torch.Tensor, n_src: int) -> torch.Tensor:
    """`[F, S*C]` -> `[F, S]`: sum over each source's channels."""
    return per_channel.unflatten(-1, (n_src, -1)).sum(-1)


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


@contextlib.contextmanager
def _cpu_workers(device: torch.device) -> Iterator[int]:
    """Yield how many threads to split the work over, holding torch's own at one meanwhile.

    On the CPU the work is split into chunks of frames run by a pool of `torch.get_num_threads()`
    threads, each running torch (and scipy's FFT) single-threaded: hundreds of small
    operations each parallelised by torch stall at every barrier when the cores are shared
    (measured 2-4x slower than one thread on a loaded 2-core machine), while independent
    chunks do not. On a GPU: one worker, nothing changed.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _run_all(fn: Callable[..., None], tasks: Iterable, workers: int) -> None:
    """`fn(task)` for every task, on `workers` threads (torch and scipy release the GIL)."""
    if workers <= 1:
        for task in tasks:
            fn(task)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(fn, tasks):  # re-raises the first error
            pass


def _rfft(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """`torch.fft.rfft`, through scipy on the CPU.

    scipy's pocketfft does these batched real transforms about twice as fast as torch's CPU FFT
    (measured on 2 cores) and takes strided input as it is. It uses torch's thread count, one
    inside `_cpu_workers`' pool.
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


def _frame_view(audio: torch.Tensor, starts: list[int], frame_len: int) -> torch.Tensor:
    """`audio[S, T, C]` -> `[S, F, frame_len, C]`, a view (frame f starts at `starts[f]`)."""
    hop = starts[1] - starts[0] if len(starts) > 1 else frame_len
    audio = audio[:, starts[0] : starts[-1] + frame_len]
    if hop == frame_len:
        return audio.unflatten(1, (len(starts), frame_len))
    return audio.unfold(1, frame_len, hop).transpose(-1, -2)


def _frame_energies(
    references: torch.Tensor,
    estimates: torch.Tensor,
    starts: list[int],
    frame_len: int,
    workers: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame energies and museval's silence test, on the inputs' own layout.

    Args:
        references, estimates: `[S, T, C]`.
        starts, frame_len: the frames.
        workers: CPU threads (chunks of frames run in parallel).

    Returns:
        signal, estimate, error: float64 `[F, S, C]`, per channel `sum s^2`, `sum s_hat^2` and
            `sum (s_hat - s)^2` over each frame;
        silent: bool `[2, F, S]` (references, estimates): the sum over channels is zero at
            every sample of the frame (museval's `_any_source_silent`).
    """
    n_src, _, n_chan = references.shape
    n_frames = len(starts)
    device = references.device
    energy = torch.empty(3, n_frames, n_src, n_chan, dtype=torch.float64, device=device)
    silent = torch.empty(2, n_frames, n_src, dtype=torch.bool, device=device)
    # Chunks of frames bound the float64 copies and the difference (about 8 MB each).
    chunk = max(1, _CHUNK_SAMPLES * 16 // (frame_len * n_chan))
    views = [_frame_view(a, starts, frame_len) for a in (references, estimates)]

    def run(task: tuple[int, int]) -> None:
        j, f0 = task
        frames = slice(f0, f0 + chunk)
        ref, est = (v[j, frames].to(torch.float64) for v in views)  # [c, W, C]
        # Energies as diagonals of the channels' Gram matrices: a batched product reads the
        # interleaved channels at memory speed; a reduction over time does not.
        for i, x in enumerate((ref, est)):
            gram = x.mT @ x  # [c, C, C]
            energy[i, frames, j] = gram.diagonal(dim1=-2, dim2=-1)
            silent[i, frames, j] = _silent_frames(x, gram)
        diff = est - ref
        energy[2, frames, j] = (diff.mT @ diff).diagonal(dim1=-2, dim2=-1)

    _run_all(run, [(j, f0) for j in range(n_src) for f0 in range(0, n_frames, chunk)], workers)
    return energy[0], energy[1], energy[2], silent


def _silent_frames(frames: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """museval's silence test for `frames[c, W, C]` given their Gram matrices: bool `[c]`.

    `1^T G 1` is the energy of the channel sum up to rounding, far below 1e-6 of the channel
    energies when the sum is zero at every sample; only such frames are checked exactly.
    """
    total = gram.sum((-2, -1))
    candidates = total <= 1e-6 * gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    out = torch.zeros_like(candidates)
    for f in torch.nonzero(candidates).flatten().tolist():
        out[f] = not frames[f].sum(-1).any()
    return out


def _scan(
    references: torch.Tensor,
    estimates: torch.Tensor,
    starts: list[int],
    frame_len: int,
    n_lags: int,
    workers: int = 1,
) -> torch.Tensor:
    """Lag correlations of the frame-cut signals, in one pass over the frames.

    Frames are copied chunk by chunk into a float64 buffer `[frames, time, channels]` (the
    reference channels, source-major, then the estimate channels), zero beyond the frame.

    Args:
        references, estimates: `[S, T, C]`.
        starts, frame_len: the frames (they may overlap).
        n_lags: number of lags.
        workers: CPU threads (chunks of frames run in parallel).

    Returns:
        float64 `[F, n_lags, S*C, 2*S*C]`, `corr[f, k, p, q] = sum_t x_p[t] y_q[t + k]` over
        frame f, x the reference channels, y the reference then estimate channels.
    """
    n_src, _, n_chan = references.shape
    m = n_src * n_chan
    device = references.device
    n_frames = len(starts)
    # Blocks of the frame, each correlated with itself extended by n_lags - 1 samples; the
    # extended blocks are exactly one FFT long, so they go to the FFT as strided views.
    nfft = min(_BLOCK_NFFT, _next_fast_len(frame_len + n_lags - 1))
    block = nfft - n_lags + 1
    n_blocks = -(-frame_len // block)
    buf_len = n_blocks * block + n_lags - 1
    chunk = max(1, _CHUNK_SAMPLES // frame_len)
    corr = torch.empty(n_frames, n_lags, m, 2 * m, dtype=torch.float64, device=device)
    views = [_frame_view(a, starts, frame_len) for a in (references, estimates)]

    def run(f0: int) -> None:
        f1 = min(f0 + chunk, n_frames)
        buf = torch.empty(f1 - f0, buf_len, 2, n_src, n_chan, dtype=torch.float64, device=device)
        buf[:, frame_len:] = 0
        # One source at a time: contiguous runs on both sides (faster than one permuted copy).
        for i, view in enumerate(views):
            for j in range(n_src):
                buf[:, :frame_len, i, j].copy_(view[j, f0:f1])
        buf = buf.flatten(2)  # [c, buf_len, 2m]
        # The plain blocks, zero-padded to the FFT length.
        x = torch.zeros(f1 - f0, n_blocks, nfft, m, dtype=torch.float64, device=device)
        x[:, :, :block] = buf[:, : n_blocks * block, :m].unflatten(1, (n_blocks, block))
        y = buf.unfold(1, nfft, block).transpose(-1, -2)  # [c, b, nfft, 2m]
        corr[f0:f1] = _block_correlations(x, y, n_lags)

    _run_all(run, range(0, n_frames, chunk), workers)
    return corr


def _block_correlations(x: torch.Tensor, y: torch.Tensor, n_lags: int) -> torch.Tensor:
    """`r[c, k, p, q] = sum_b sum_t x[c, b, t, p] y[c, b, t + k, q]` for `0 <= k < n_lags`.

    Each block of x (zero after `nfft - n_lags + 1` samples) is correlated with the same block
    of y extended by `n_lags - 1` samples, in the frequency domain (no lag wraps around); the
    cross-spectra are summed over blocks in one batched product per frequency before a single
    inverse FFT.

    Args:
        x: float64 `[c, b, nfft, m]`; y: float64 `[c, b, nfft, n]`.

    Returns:
        float64 `[c, n_lags, m, n]`.
    """
    nfft = x.shape[2]
    xf = _rfft(x, nfft, 2)  # [c, b, K, m]
    yf = _rfft(y, nfft, 2)  # [c, b, K, n]
    # Sum over blocks of conj(X)^T Y for every frame and frequency (einsum picks a layout
    # twice as fast as an explicit batched matmul here).
    cross = torch.einsum("cbkp,cbkq->ckpq", xf.conj(), yf)
    return _irfft(cross, nfft, 1)[:, :n_lags]


def _boundary_correlations(
    references: torch.Tensor, estimates: torch.Tensor, boundaries: list[int], n_lags: int
) -> torch.Tensor:
    """The part of the whole-track correlations from pairs `(t, t + k)` across a boundary.

    For a boundary at o, the pairs with `t < o <= t + k` (`k < n_lags`) involve only the
    `n_lags - 1` samples on either side of it. Segments between boundaries must be at least
    `n_lags - 1` long, so that no pair straddles two boundaries.

    Returns:
        float64 `[n_lags, S*C, 2*S*C]`, as `_scan`'s correlations.
    """
    n_src, length, n_chan = references.shape
    device = references.device
    # Windows [o - L + 1, o + L - 1) around each boundary, zero beyond the track.
    offsets = torch.arange(-(n_lags - 1), n_lags - 1, device=device)
    index = torch.tensor(boundaries, device=device)[:, None] + offsets
    inside = (index < length)[:, :, None, None, None]
    index = index.clamp(max=length - 1)
    buf = torch.stack([references[:, index], estimates[:, index]], 2)  # [S, B, 2, 2L-2, C]
    buf = buf.to(torch.float64).permute(1, 3, 2, 0, 4).mul(inside).flatten(2)  # [B, 2L-2, 2m]
    size = 2 ** math.ceil(math.log2(2 * (n_lags - 1)))
    m = n_src * n_chan
    before = _rfft(buf[:, : n_lags - 1, :m], size, 1)  # [B, Kb, m]
    after = _rfft(buf[:, n_lags - 1 :], size, 1)  # [B, Kb, 2m]
    cross = before.permute(1, 2, 0).conj().resolve_conj() @ after.transpose(0, 1)  # [Kb, m, 2m]
    edge = _irfft(cross, size, 0)
    # sum_i before[i] after[i + k - (L - 1)]: circular index k - (L - 1).
    lags = (torch.arange(n_lags, device=device) - (n_lags - 1)) % size
    return edge[lags]


def _distortion_filters(
    corr: torch.Tensor, n_src: int, n_chan: int
) -> tuple[torch.Tensor, torch.Tensor, bool, list[bool]]:
    """Least-squares distortion filters fitted on the whole track, for every estimate channel.

    The solve runs in numpy on the CPU whatever the device (see `_bsseval_toeplitz`); the data
    moved is the `[L, m, 2m]` correlations.

    Args:
        corr: float64 `[L, m, 2m]` whole-track correlations (as `_scan`'s), `m = S*C`.

    Returns:
        `c_all[L, m, m]`: museval's `C` for all estimates at once, the filters (taps first) from
        every reference channel (second axis) to every estimate channel (last axis);
        `c_own[L, m, m]`: museval's `Cj` in the same layout, zero between different sources;
        whether the joint system, and each source's own, was singular and regularised.
    """
    m = n_src * n_chan
    corr_np = corr.cpu().numpy()
    # Block k of the block-Toeplitz Gram matrix of the delayed references (delay-major order):
    # gram[k][p, q] = <x_p, x_q advanced by k>; museval's G after reordering its axes.
    gram = np.ascontiguousarray(corr_np[:, :, :m])
    gram[0] += EPS * np.eye(m)  # museval adds machine epsilon to G's diagonal too
    # rhs[a][p, e] = <reference channel p delayed by a, estimate channel e>: museval's D.
    rhs = np.ascontiguousarray(corr_np[:, :, m:])
    c_all, singular_all = solve_block_toeplitz(gram, rhs)

    # Spatial filters: the same normal equations restricted to one source's own channels, for
    # all sources at once (a batch of Toeplitz systems with C x C blocks).
    own = [slice(j * n_chan, (j + 1) * n_chan) for j in range(n_src)]
    solved, singular_own = solve_block_toeplitz(
        np.stack([gram[:, s, s] for s in own]), np.stack([rhs[:, s, s] for s in own])
    )
    c_own = np.zeros_like(c_all)
    for j, s in enumerate(own):
        c_own[:, s, s] = solved[j]
    return (
        torch.from_numpy(c_all).to(corr.device),
        torch.from_numpy(c_own).to(corr.device),
        bool(singular_all),
        singular_own.tolist(),
    )


def _frame_ratios(
    frame_corr: torch.Tensor,
    signal: torch.Tensor,
    estimate: torch.Tensor,
    c_all: torch.Tensor,
    c_own: torch.Tensor,
    n_src: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ISR, SIR, SAR per frame as bilinear forms in the frame correlations.

    For estimate channel e with projections `p_own = sum_p h_own[:, p, e] * x_p` and `p_all`
    (full convolutions of the frame-cut reference channels x_p), reference channel s and
    estimate channel y:

        |p|^2 = sum_{p, q, k >= 0} w_k r[k, p, q] phi[k, p, q],  w_0 = 1, w_k = 2,
            phi[k, p, q] = sum_a h[a, p] h[a - k, q]
        <p_own, p_all> = sum_{p, q, k >= 0} r[k, p, q] (psi[k, p, q] + [k > 0] psi'[k, p, q]),
            psi[k, p, q] = sum_a h_own[a, p] h_all[a - k, q],
            psi'[k, p, q] = sum_a h_own[a, q] h_all[a + k, p]
        <p, z> = sum_{p, a} h[a, p] r[a, p, z]  for z = s or y,

    with `r` the frame's lag correlations. The error energies follow by expanding
    `|a - b|^2 = |a|^2 - 2 <a, b> + |b|^2`; in float64 that costs no accuracy that matters
    here (the expansions lose about as many digits as the ratio in dB / 10, e.g. 4 at 40 dB).

    Args:
        frame_corr: `[F, L, m, 2m]` from `_scan`.
        signal, estimate: `[F, m]` per-channel energies of the reference and estimate frames.
        c_all, c_own: `[L, m, m]` from `_distortion_filters`.

    Returns:
        isr, sir, sar: float64 `[F, S]` in dB.
    """
    n_frames, n_lags, m, _ = frame_corr.shape
    size = 2 ** math.ceil(math.log2(2 * n_lags))
    h_all = _rfft(c_all, size, 0)  # [K, m(p), m(e)]
    h_own = _rfft(c_own, size, 0)

    def corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sum_t a_p[t] b_q[t + k] for every estimate channel e: [L, m(p), m(q), m(e)].
        spectrum = a.conj()[:, :, None, :] * b[:, None, :, :]
        return _irfft(spectrum, size, 0)[:n_lags]

    double = torch.full((n_lags, 1, 1, 1), 2.0, dtype=torch.float64, device=c_all.device)
    double[0] = 1.0
    # phi[k, p, q] = sum_a h[a, p] h[a - k, q] = sum_t h_q[t] h_p[t + k]: corr(h_q, h_p).
    phi_own = corr(h_own, h_own).transpose(1, 2) * double
    phi_all = corr(h_all, h_all).transpose(1, 2) * double
    # psi[k, p, q] = sum_t h_all_q[t] h_own_p[t + k]; psi'[k, p, q] = sum_t h_own_q[t]
    # h_all_p[t + k], which stands for the lags -k of psi (pairs counted once from k >= 0).
    psi = corr(h_all, h_own).transpose(1, 2)
    psi_t = corr(h_own, h_all).transpose(1, 2)
    psi_t[0] = 0
    coefficients = torch.stack([phi_own, phi_all, psi + psi_t], -2)  # [L, m, m, 3, m(e)]
    ref_ref = frame_corr[..., :m].reshape(n_frames, -1)
    own_sq, all_sq, own_all = (
        (ref_ref @ coefficients.reshape(-1, 3 * m)).unflatten(-1, (3, m)).unbind(1)
    )
    own_s = torch.einsum("fkpe,kpe->fe", frame_corr[..., :m], c_own)
    all_y = torch.einsum("fkpe,kpe->fe", frame_corr[..., m:], c_all)

    def source(x: torch.Tensor) -> torch.Tensor:
        return _by_source(x, n_src)

    # A projection energy that rounds below zero is zero (-inf dB, as museval would get), not
    # a NaN that would read as a silent frame.
    own_sq, all_sq = own_sq.clamp(min=0), all_sq.clamp(min=0)
    isr = _safe_db(source(signal), source(own_sq - 2 * own_s + signal))
    sir = _safe_db(source(own_sq), source(all_sq - 2 * own_all + own_sq))
    sar = _safe_db(source(all_sq), source(estimate - 2 * all_y + all_sq))
    return isr, sir, sar

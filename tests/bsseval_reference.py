"""A high-precision BSSEval v4 (images mode, whole-track filters) to judge the fast backend by.

It computes what `museval.evaluate(references, estimates, win, hop)` computes, without the
rounding errors that matter when the references are nearly linearly dependent at the filter
lags (pure tones, 16-bit quantisation noise as the only broadband content):

1. Correlations, exact: every float64 signal is split, without rounding, into pieces of 10 bits
   on a binary scale per channel (`_split`); the pieces' correlations are integers (below 2^44
   for a 16 s track), which a float64 FFT gets exactly after rounding (checked); they are
   summed in
   `np.longdouble` (64-bit mantissa on x86). Whole-track correlations give museval's Gram
   matrix `G` (plus its `eps * I`) and right-hand sides `D`; each frame's correlations give the
   frame energies.
2. The normal equations `(G + eps I) x = D`, solved by iterative refinement: an LU
   factorisation in float64 and residuals in long double. It converges to the exact solution
   (to about `cond(G) * 1e-19` relative) whenever `cond(G) * 1e-16` is well below one, and
   raises `IllConditioned` otherwise: there the answer depends on rounding at the inputs'
   precision, and no float64 computation, museval's included, can claim it (`ridge=` solves
   the regularised equations that mss.metrics.bsseval uses there instead).
3. The frame energies `|p_own|^2, |p_all|^2, <p_own, p_all>, <p_own, s>, <p_all, s_hat>` as
   bilinear forms in the frame's exact lag correlations and the filters' correlations, in long
   double; then SDR, ISR, SIR, SAR exactly as museval's `_bss_crit` (images mode).

Slow (minutes for a 16 s four-stem track): tests use a few seconds of two sources.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.linalg

__all__ = [
    "FILTERS_LEN",
    "IllConditioned",
    "exact_correlations",
    "projection_filters",
    "refined_solve",
    "scores",
]

FILTERS_LEN = 512
LD = np.longdouble
_BITS = 10  # bits per piece: products below 2^20, sums of N of them exactly rounded by the FFT
_PIECES = 7  # 70 bits below each signal's peak; the rest is below 1e-21 of it
_EPS64 = float(np.finfo(np.float64).eps)


class IllConditioned(ArithmeticError):
    """The normal equations are too ill-conditioned for a float64-based answer to mean anything."""


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`x[N, P]` (float64) as `scale[P] * sum_i pieces[i] * 2^(-B (i + 1))`, pieces integers.

    Each step `r <- 2^B r - rint(2^B r)` is exact in float64 (the difference is a multiple of
    r's last bit and below 1/2), so the pieces hold x's bits without rounding, truncated 70 bits
    below the peak of each channel.
    """
    peak = np.max(np.abs(x), axis=0)
    _, exponent = np.frexp(np.where(peak > 0, peak, 1.0))
    scale = np.ldexp(1.0, exponent)  # power of two >= peak
    rest = x / scale
    pieces = np.empty((_PIECES, *x.shape))
    for i in range(_PIECES):
        rest = rest * 2.0**_BITS
        pieces[i] = np.rint(rest)
        rest = rest - pieces[i]
    return scale, pieces


def exact_correlations(x: np.ndarray, y: np.ndarray, max_lag: int) -> np.ndarray:
    """`corr[d + max_lag - 1, p, q] = sum_t x[t, p] y[t + d, q]` for `|d| < max_lag`, exact.

    Args:
        x: float64 `[N, P]`; y: float64 `[N, Q]` (zero beyond the ends).
        max_lag: number of non-negative lags.

    Returns:
        `np.longdouble [2 max_lag - 1, P, Q]`, each value the exact correlation of the float64
        inputs rounded to long double (leaving out terms below 1e-21 of the product of the two
        channels' peaks, per sample).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.shape[0]
    nfft = scipy.fft.next_fast_len(n + max_lag, real=True)
    sx, px = _split(x)
    sy, py = _split(y)
    fx = np.conj(scipy.fft.rfft(px, nfft, axis=1))  # [K, F, P]
    fy = scipy.fft.rfft(py, nfft, axis=1)  # [K, F, Q]
    lags = np.r_[np.arange(nfft - max_lag + 1, nfft), np.arange(max_lag)]
    out = np.zeros((2 * max_lag - 1, x.shape[1], y.shape[1]), LD)
    worst = 0.0
    for p in range(x.shape[1]):  # one reference channel at a time bounds the memory
        for level in range(_PIECES):  # pieces i + j == level; the levels beyond add < 2^-70
            spectrum = sum(fx[i][:, p, None] * fy[level - i] for i in range(level + 1))  # [F, Q]
            values = scipy.fft.irfft(spectrum, nfft, axis=0)[lags]
            integers = np.rint(values)
            worst = max(worst, float(np.max(np.abs(values - integers), initial=0.0)))
            out[:, p] += integers.astype(LD) * LD(2.0) ** (-_BITS * (level + 2))
    if worst > 0.125:
        raise ArithmeticError(f"FFT correlation not exactly rounded ({worst:.3f}): too long")
    return out * (sx[:, None] * sy[None, :]).astype(LD)


def _gram(corr: np.ndarray, filters_len: int) -> np.ndarray:
    """The Gram matrix `[(p, a), (q, b)] = corr[a - b, p, q]` of the delayed channels."""
    m = corr.shape[1]
    a = np.arange(filters_len)
    lag = a[:, None] - a[None, :] + filters_len - 1  # [a, b]
    blocks = corr[lag]  # [a, b, p, q]
    return blocks.transpose(2, 0, 3, 1).reshape(m * filters_len, m * filters_len)


def refined_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """`gram x = rhs` (long double) by iterative refinement around a float64 LU.

    `rhs` is taken as long double too; the result is long double.

    Each step shrinks the error by about `cond(gram) * 1e-16` until the long-double residuals'
    own rounding (`cond * 1e-19`); steps that stop shrinking above 1e-5 of x (which would move
    the metrics by about 1e-6 dB) mean that float64 cannot resolve the system.
    """
    rhs = np.asarray(rhs, dtype=LD)
    lu = scipy.linalg.lu_factor(gram.astype(np.float64), check_finite=False)
    x = scipy.linalg.lu_solve(lu, rhs.astype(np.float64), check_finite=False).astype(LD)
    previous = math.inf
    for _ in range(100):
        residual = rhs - gram @ x
        step = scipy.linalg.lu_solve(lu, residual.astype(np.float64), check_finite=False)
        x = x + step.astype(LD)
        size = float(np.max(np.abs(step))) / float(np.max(np.abs(x)))
        if not size > 0.25 * previous:  # still converging (NaN ends here too)
            previous = size
            if size > 1e-20:
                continue
        if not size <= 1e-5:
            raise IllConditioned(
                f"iterative refinement stalls at {size:.1e} of the solution: the Gram matrix is "
                "singular to float64 precision"
            )
        return x
    raise IllConditioned("iterative refinement did not converge in 100 steps")


def projection_filters(
    references: np.ndarray,
    estimates: np.ndarray,
    filters_len: int = FILTERS_LEN,
    ridge: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """museval's whole-track distortion filters, exactly.

    Args:
        references, estimates: float64 `[S, T, C]`.
        ridge: solve `(G + ridge * trace(G) I) x = D` instead, for every system (the
            regularisation mss.metrics.bsseval applies to singular ones).

    Returns:
        `h_all[(S C) L, S C]` (museval's `C`: the filter from every delayed reference channel,
        rows `(channel, delay)`, to every estimate channel) and `h_own` (museval's `Cj`, zero
        outside each estimate's own source), long double.
    """
    n_src, length, n_chan = references.shape
    m = n_src * n_chan
    refs = references.transpose(1, 0, 2).reshape(length, m)
    ests = estimates.transpose(1, 0, 2).reshape(length, m)
    corr = exact_correlations(refs, np.concatenate([refs, ests], 1), filters_len)
    eps = LD(_EPS64) * np.eye(m * filters_len, dtype=LD)  # museval's G + eps I
    gram = _gram(corr[:, :, :m], filters_len) + eps
    rhs = corr[filters_len - 1 :, :, m:].transpose(1, 0, 2).reshape(m * filters_len, m)

    def solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        if ridge:
            gram = gram + LD(ridge) * np.trace(gram) * np.eye(len(gram), dtype=LD)
        return refined_solve(gram, rhs)

    h_all = solve(gram, rhs)
    h_own = np.zeros_like(h_all)
    rows = np.arange(m * filters_len).reshape(m, filters_len)
    for j in range(n_src):
        own = slice(j * n_chan, (j + 1) * n_chan)
        r = rows[own].ravel()
        h_own[np.ix_(r, np.arange(m)[own])] = solve(
            gram[np.ix_(r, r)], rhs[np.ix_(r, np.arange(m)[own])]
        )
    return h_all, h_own


def _filter_correlations(u: np.ndarray, v: np.ndarray, m: int, filters_len: int) -> np.ndarray:
    """`psi[d + L - 1, p, q] = sum_a u[p, a] v[q, a - d]`, long double, for one estimate channel.

    Then `u^T G v = sum_{d, p, q} corr[d, p, q] psi[d, p, q]` for the Gram matrix of `_gram`.
    """
    u = u.reshape(m, filters_len)
    v = v.reshape(m, filters_len)
    lags = filters_len - 1
    padded = np.zeros((m, filters_len + 2 * lags), LD)
    padded[:, lags : lags + filters_len] = v
    # shifted[q, a, d + L - 1] = v[q, a - d]
    index = np.arange(filters_len)[:, None] - np.arange(-lags, lags + 1)[None, :] + lags
    shifted = padded[:, index]
    return np.einsum("pa,qad->dpq", u, shifted)


def _frames(length: int, win: int, hop: int) -> list[slice]:
    if win >= length:
        return [slice(0, length)]
    return [slice(k * hop, k * hop + win) for k in range((length - win + hop) // hop)]


def _db(num, den) -> float:
    if den == 0:
        return math.inf
    return float(10 * np.log10(LD(num) / LD(den)))


def scores(
    references: np.ndarray,
    estimates: np.ndarray,
    win: int,
    hop: int,
    filters_len: int = FILTERS_LEN,
    ridge: float = 0.0,
) -> dict[str, np.ndarray]:
    """BSSEval v4 images-mode metrics as `museval.evaluate(references, estimates, win, hop)`.

    Args:
        references, estimates: `[S, T, C]`, same shape, no source silent over the whole track.
        ridge: see `projection_filters`.

    Returns:
        `{"SDR", "ISR", "SIR", "SAR"} -> float64 [S, frames]`, NaN in frames where any reference
        or estimate is silent (museval's rule).

    Raises:
        IllConditioned: where the filters are not determined in float64 (see the module doc).
    """
    references = np.asarray(references, np.float64)
    estimates = np.asarray(estimates, np.float64)
    n_src, length, n_chan = references.shape
    m = n_src * n_chan
    h_all, h_own = projection_filters(references, estimates, filters_len, ridge)
    psi = {
        key: [_filter_correlations(u[:, e], v[:, e], m, filters_len) for e in range(m)]
        for key, (u, v) in {
            "own": (h_own, h_own),
            "all": (h_all, h_all),
            "own_all": (h_own, h_all),
        }.items()
    }
    refs = references.transpose(1, 0, 2).reshape(length, m)
    ests = estimates.transpose(1, 0, 2).reshape(length, m)
    frames = _frames(length, win, hop)
    out = {metric: np.full((n_src, len(frames)), np.nan) for metric in ("SDR", "ISR", "SIR", "SAR")}
    for f, frame in enumerate(frames):
        if (references[:, frame].sum(-1) == 0).all(-1).any() or (
            (estimates[:, frame].sum(-1) == 0).all(-1).any()
        ):
            continue
        x, y = refs[frame], ests[frame]
        corr = exact_correlations(x, np.concatenate([x, y], 1), filters_len)
        ref_ref, ref_est = corr[:, :, :m], corr[filters_len - 1 :, :, m:]
        for j in range(n_src):
            energy = dict.fromkeys(
                ("s", "e", "err", "own", "all", "own_all", "own_s", "all_e"), LD(0)
            )
            for c in range(n_chan):
                e = j * n_chan + c
                s_sig, y_sig = x[:, e].astype(LD), y[:, e].astype(LD)
                energy["s"] += np.sum(s_sig * s_sig)
                energy["e"] += np.sum(y_sig * y_sig)
                energy["err"] += np.sum((y_sig - s_sig) ** 2)
                for key in ("own", "all", "own_all"):
                    energy[key] += np.sum(ref_ref * psi[key][e])
                # <p, z> = sum_{p, a} h[(p, a)] sum_t x_p[t - a] z[t] = sum h corr_pz[a]
                own_rows = h_own[:, e].reshape(m, filters_len)
                all_rows = h_all[:, e].reshape(m, filters_len)
                energy["own_s"] += np.sum(own_rows * ref_ref[filters_len - 1 :, :, e].T)
                energy["all_e"] += np.sum(all_rows * ref_est[:, :, e].T)
            s, own, all_, own_all = energy["s"], energy["own"], energy["all"], energy["own_all"]
            out["SDR"][j, f] = _db(s, energy["err"])
            out["ISR"][j, f] = _db(s, own - 2 * energy["own_s"] + s)
            out["SIR"][j, f] = _db(own, all_ - 2 * own_all + own)
            out["SAR"][j, f] = _db(all_, energy["e"] - 2 * energy["all_e"] + all_)
    return out

"""Solving the block-Toeplitz normal equations of BSSEval's distortion filters.

museval's Gram matrix of the delayed reference channels, in delay-major order, is a symmetric
positive (semi-)definite block-Toeplitz matrix `T` with `L` x `L` blocks of `m` x `m` (`L` taps,
`m` = sources x channels): `T[i, j] = R[i - j]` for `i >= j` and `R[j - i]^T` above the
diagonal, `R[k]` the channels' correlation at lag k. The block Levinson recursion solves
`T x = y` in O(L^2 m^3) instead of the O(L^3 m^3) of museval's dense LU (a 4096 x 4096 LU per
estimate for four stereo stems).

Levinson is only weakly stable: its error grows with the conditioning of every leading section
of T, not only T's. On broadband music it stays small (1e-4 relative or less, measured on the
rendered benchmark tracks), but on the toy set, whose stems are panned mono parts (two channels
equal up to 16-bit rounding: the m x m blocks themselves have condition numbers about 1e8), it
was off by 10-100 % while its residual looked fine (5e-11 of ||T|| ||x||), which moved SIR by up
to 8.6 dB. Two remedies: the recursion runs in the channel basis where `R[0]` is the identity
(`_channel_whitening`), which brings it back within 1e-4 there, and `solve_block_toeplitz`
checks the *solution* by iterative refinement (a step must shrink below 1e-4 of it, or the
system goes to a dense Cholesky solve, which is backward stable like museval's LU). The
refinement applies `T^{-1}` through the Gohberg-Semencul formula, from the first and last block
columns of `T^{-1}` that the recursion computes anyway, so it costs FFTs only.

Where T is singular to float64 precision (condition number above 1e15: the tail of its spectrum
is rounding noise), no float64 solve is determined by the data, museval's included: perturbing
the input by one unit in the last place moved museval's ISR and SIR by 11 and 17 dB in the tests.
Such a system is solved with a Tikhonov term `RIDGE * trace(T)`, which bounds its condition
number by 1 / RIDGE = 1e12, so that the filters are a well-defined function of the signals
(`solve_block_toeplitz` reports which systems were regularised).

Numpy on the CPU: the recursion is a chain of small products, where numpy's per-call cost is
a fraction of torch's and a GPU's kernel launches would dominate.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import scipy.fft
import scipy.linalg

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # only makes the recursion slower
    threadpool_limits = None

__all__ = [
    "COND_LIMIT",
    "RIDGE",
    "block_levinson",
    "block_toeplitz_matmul",
    "dense_block_toeplitz",
    "gohberg_semencul",
    "solve_block_toeplitz",
]

EPS = float(np.finfo(float).eps)

# Levinson's solution is accepted once an iterative-refinement step (taken) is below this
# fraction of it, per right-hand side; a solution Levinson got wrong gives steps that do not
# shrink. A step s leaves an error about s times Levinson's relative error (1e-5 or less once
# whitened: the first step was 1e-6 to 4e-5 on the toy set and the benchmark tracks, and the
# metrics then matched the exact ones as closely as museval's). Refinement stops there: later
# steps are at the noise floor of the Gohberg-Semencul product (about 1e-6 of the solution) and
# moved the toy set's ISR by 1e-5 dB. A step costs FFT products, not a Levinson recursion.
REFINE_TOL = 1e-4
# Steps allowed to get there before the dense solve.
MAX_REFINE = 8

COND_LIMIT = 1e15
"""Condition number (LAPACK's 1-norm estimate) above which T counts as singular: float64
rounding alone (1.1e-16 relative) can then change the solution by 10 % or more."""

RIDGE = 1e-12
"""Tikhonov term of the singular systems, relative to trace(T) (which bounds ||T||_2)."""


def solve_block_toeplitz(blocks: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve `T x = y` for symmetric positive (semi-)definite block-Toeplitz systems.

    Block Levinson recursion with iterative refinement; a system whose refinement does not
    converge to `REFINE_TOL` within `MAX_REFINE` steps is solved by a dense Cholesky
    factorisation (plus one refinement step) instead, and one that is singular to float64
    precision (Cholesky fails, or the condition estimate exceeds `COND_LIMIT`) is solved as
    `(T + RIDGE trace(T) I) x = y`.

    Args:
        blocks: `[..., L, m, m]`, `T[i, j] = blocks[i - j]` for `i >= j` and
            `blocks[j - i]^T` above the diagonal.
        rhs: `[..., L, m, r]`.

    Returns:
        `x[..., L, m, r]`, and `regularised[...]` (bool): which systems were singular.
    """
    batch = blocks.shape[:-3]
    flat_blocks = blocks.reshape(-1, *blocks.shape[-3:])
    flat_rhs = rhs.reshape(-1, *rhs.shape[-3:])
    regularised = np.zeros(len(flat_blocks), dtype=bool)
    with np.errstate(all="ignore"), _one_blas_thread():
        x, converged = _refined_levinson(flat_blocks, flat_rhs)
    for i in np.flatnonzero(~converged):  # LAPACK with its threads
        x[i], regularised[i] = _dense_solve(flat_blocks[i], flat_rhs[i])
    return x.reshape(rhs.shape), regularised.reshape(batch)


def _relative_size(step: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`max_r ||step[..., r]|| / ||x[..., r]||` per system of `[n, L, m, r]` (0 for a zero step)."""
    num = np.sqrt(np.sum(step**2, axis=(1, 2)))
    den = np.sqrt(np.sum(x**2, axis=(1, 2)))
    ratio = np.where(num == 0, 0.0, num / np.where(den == 0, 1.0, den))
    ratio = np.where((num > 0) & (den == 0), np.inf, ratio)
    return np.max(np.where(np.isfinite(ratio), ratio, np.inf), axis=-1)


def _channel_whitening(first: np.ndarray) -> np.ndarray:
    """`W[n, m, m]` with `W^T R[0] W = I` for each `first[n] = R[0]` (eigenvalues floored).

    Levinson's first step inverts R[0]: where two channels are nearly proportional (a panned
    mono stem, equal up to 16-bit rounding: cond(R[0]) about 1e8), every step inherits that
    conditioning and the recursion loses most of its digits. In the channel basis that makes R[0]
    the identity, the same recursion stayed within 1e-4 of a dense solve on the toy set.
    """
    values, vectors = np.linalg.eigh(first)
    top = np.maximum(values[..., -1:], np.finfo(float).tiny)
    return vectors / np.sqrt(np.maximum(values, top * EPS))[..., None, :]


def _refined_levinson(blocks: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levinson solutions of `[n, L, m, m]` systems, refined; also which ones converged.

    The recursion runs on the congruent system `(I x W)^T T (I x W)` (`_channel_whitening`);
    residuals are taken on T itself, so the refinement converges to T's solution.
    """
    n = len(blocks)
    converged = np.zeros(n, dtype=bool)
    whitening = _channel_whitening(blocks[:, 0])[:, None]  # [n, 1, m, m]
    whitening_t = np.swapaxes(whitening, -1, -2)
    white_blocks = whitening_t @ blocks @ whitening

    try:
        x, first, last = block_levinson(white_blocks, whitening_t @ rhs, inverse=True)
    except np.linalg.LinAlgError:  # a singular leading block
        return np.zeros_like(rhs), converged
    x = whitening @ x

    def approximate_solve(index: np.ndarray, y: np.ndarray) -> np.ndarray:
        # T^{-1} y from Levinson's first and last block columns of the inverse: FFTs only
        solved = gohberg_semencul(first[index], last[index], whitening_t[index] @ y)
        return whitening[index] @ solved

    active = np.ones(n, dtype=bool)
    previous = np.full(n, np.inf)
    for _ in range(MAX_REFINE):
        index = np.flatnonzero(active)
        residual = rhs[index] - block_toeplitz_matmul(blocks[index], x[index])
        try:
            step = approximate_solve(index, residual)
        except np.linalg.LinAlgError:  # a singular corner block of the inverse
            converged[index] = False
            break
        size = _relative_size(step, x[index])
        # A step that does not halve is noise (or Levinson is too far off to refine): not taken.
        taken = size <= 0.5 * previous[index]
        x[index[taken]] += step[taken]
        converged[index[taken]] = size[taken] <= REFINE_TOL
        active[index[~taken]] = False
        active[index[converged[index]]] = False
        previous[index] = size
        if not active.any():
            break
    return x, converged


def _dense_solve(blocks: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, bool]:
    """One `[L, m, m]` system by a dense Cholesky solve; True if it had to be regularised."""
    n_blocks, m, _ = blocks.shape
    n = n_blocks * m
    flat = rhs.reshape(n, -1)
    dense = dense_block_toeplitz(blocks)
    factor, info = scipy.linalg.lapack.dpotrf(dense, lower=1, clean=0, overwrite_a=0)
    singular = info != 0
    if not singular:
        rcond, _ = scipy.linalg.lapack.dpocon(factor, _norm_1(blocks), uplo="L")
        singular = not rcond * COND_LIMIT >= 1
    if singular:
        ridge = RIDGE * n_blocks * np.trace(blocks[0])  # RIDGE * trace(T)
        blocks = blocks.copy()
        blocks[0] += ridge * np.eye(m)
        dense[np.diag_indices(n)] += ridge
        factor, info = scipy.linalg.lapack.dpotrf(dense, lower=1, clean=0, overwrite_a=1)
        if info != 0:  # only for a T with no positive eigenvalue worth the name
            raise np.linalg.LinAlgError("singular Gram matrix even with the ridge")
    x = scipy.linalg.cho_solve((factor, True), flat, check_finite=False).reshape(rhs.shape)
    residual = (rhs - block_toeplitz_matmul(blocks, x)).reshape(n, -1)
    x += scipy.linalg.cho_solve((factor, True), residual, check_finite=False).reshape(rhs.shape)
    return x, singular


def _norm_1(blocks: np.ndarray) -> float:
    """The 1-norm (largest column sum of |T|) of the block-Toeplitz T, from its blocks."""
    n_blocks = blocks.shape[0]
    below = np.cumsum(np.abs(blocks).sum(1), 0)  # [k, q]: sum_p |R[0..k][p, q]|
    above = np.cumsum(np.abs(blocks[1:]).sum(2), 0)  # [k, q]: sum_p |R[1..k+1][q, p]|
    columns = below[::-1].copy()  # block column b: R[0 .. L-1-b] below the diagonal
    columns[1:] += above[: n_blocks - 1]  # and R[1 .. b]^T above it
    return float(columns.max())


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Keep numpy's BLAS on one thread: the recursion's products are small, and waking other
    threads for each made it 12x slower on 2 cores (measured)."""
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def dense_block_toeplitz(blocks: np.ndarray) -> np.ndarray:
    """The block-Toeplitz matrix `[..., L m, L m]` of `solve_block_toeplitz`."""
    *batch, n, m, _ = blocks.shape
    full = np.empty((*batch, n, m, n, m), dtype=blocks.dtype)
    upper = np.moveaxis(blocks, -1, -3)  # upper[..., p, k, q] = R[k][q, p] = R[k]^T[p, q]
    for i in range(n):
        # row block i: R[i], ..., R[0] left of and on the diagonal, R[1]^T ... to its right
        full[..., i, :, : i + 1, :] = np.swapaxes(blocks[..., i::-1, :, :], -3, -2)
        full[..., i, :, i + 1 :, :] = upper[..., :, 1 : n - i, :]
    return full.reshape(*batch, n * m, n * m)


def block_toeplitz_matmul(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """`T x` for the block-Toeplitz T of `solve_block_toeplitz`, by FFT convolutions.

    `(T x)[i] = sum_{j <= i} R[i - j] x[j] + sum_{j > i} R[j - i]^T x[j]`: a causal block
    convolution with R plus an anti-causal one with R^T.
    """
    n = blocks.shape[-3]
    nfft = 2 ** math.ceil(math.log2(2 * n))

    def convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        spectrum = scipy.fft.rfft(a, nfft, axis=-3) @ scipy.fft.rfft(b, nfft, axis=-3)
        return scipy.fft.irfft(spectrum, nfft, axis=-3)[..., :n, :, :]

    # Anti-causal part: reverse x in time, convolve with R^T at lags >= 1, reverse back.
    blocks_t = np.swapaxes(blocks, -1, -2).copy()
    blocks_t[..., 0, :, :] = 0
    return convolve(blocks, x) + convolve(blocks_t, x[..., ::-1, :, :])[..., ::-1, :, :]


def block_levinson(
    blocks: np.ndarray, rhs: np.ndarray, inverse: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block Levinson recursion for `T x = y` (T as in `solve_block_toeplitz`).

    After step n, the forward and backward vectors f, b (n blocks of m x m) solve
    `T_n f = [I 0 .. 0]` and `T_n b = [0 .. 0 I]` for the leading n x n blocks of T, and x solves
    `T_n x = y[:n]`; step n + 1 extends all three with the prediction errors of row n + 1.
    O(L^2 m^3) operations instead of the O(L^3 m^3) of a dense factorisation, as products of
    m-column matrices with the n m-row history.
    """
    *batch, n_blocks, m, _ = blocks.shape
    r = rhs.shape[-1]
    eye = np.eye(m)
    # The part of row n of T left of the diagonal, transposed and stacked by delay blocks:
    # rows [(L-1-n) m, (L-1) m) of `down` hold [R[n] ... R[1]]^T, rows [m, (n+1) m) of `up`
    # hold [R[1]^T ... R[n]^T]^T. Contiguous row ranges, so the products need no copies.
    down = np.ascontiguousarray(np.swapaxes(blocks[..., ::-1, :, :], -1, -2))
    down = down.reshape(*batch, n_blocks * m, m)
    up = blocks.reshape(*batch, n_blocks * m, m)
    # Columns [f | b | x], rows by delay block; b is stored one block down, so that rows
    # [0, (n+1) m) of [f | b] are [[f; 0] | [0; b]] and both extend in one product.
    state = np.zeros((*batch, (n_blocks + 1) * m, 2 * m + r))
    inv0 = np.linalg.inv(blocks[..., 0, :, :])
    state[..., :m, :m] = inv0
    state[..., m : 2 * m, m : 2 * m] = inv0
    state[..., :m, 2 * m :] = inv0 @ rhs[..., 0, :, :]
    for n in range(1, n_blocks):
        nm = n * m
        row = down[..., (n_blocks - 1 - n) * m : (n_blocks - 1) * m, :]
        errors = np.swapaxes(row, -1, -2) @ state[..., :nm, :]
        ef, ex = errors[..., :m], errors[..., 2 * m :]
        eb = np.swapaxes(up[..., m : nm + m, :], -1, -2) @ state[..., m : nm + m, m : 2 * m]
        inv = np.linalg.inv(np.stack([eye - eb @ ef, eye - ef @ eb], -3))
        a, d = inv[..., 0, :, :], inv[..., 1, :, :]
        # [f_new b_new] = [f; 0] [a, -eb d] + [0; b] [-ef a, d]
        mix = np.concatenate(
            [np.concatenate([a, -eb @ d], -1), np.concatenate([-ef @ a, d], -1)], -2
        )
        new = state[..., : nm + m, : 2 * m] @ mix
        state[..., : nm + m, :m] = new[..., :m]
        state[..., m : nm + 2 * m, m : 2 * m] = new[..., m:]
        state[..., : nm + m, 2 * m :] += new[..., m:] @ (rhs[..., n, :, :] - ex)
    x = state[..., : n_blocks * m, 2 * m :].reshape(*batch, n_blocks, m, r)
    if not inverse:
        return x
    first = state[..., : n_blocks * m, :m].reshape(*batch, n_blocks, m, m)
    last = state[..., m : (n_blocks + 1) * m, m : 2 * m].reshape(*batch, n_blocks, m, m)
    return x, first, last


def gohberg_semencul(first: np.ndarray, last: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`T^{-1} y` from the first and last block columns of `T^{-1}`, by FFT convolutions.

    The displacement of `T^{-1}` has rank 2m (Gohberg and Heinig's block form of the
    Gohberg-Semencul formula): with X = first, Y = last, Z the block down-shift and L(V) the
    block lower-triangular Toeplitz matrix with first block column V,
    `T^{-1} = L(X) (I x X_0^{-1}) L(X)^T - L(Z Y) (I x Y_{L-1}^{-1}) L(Z Y)^T`.
    O(L m^2 log L) per right-hand side instead of Levinson's O(L^2 m^3).

    Args:
        first, last: `[..., L, m, m]` (`block_levinson(..., inverse=True)`).
        y: `[..., L, m, r]`.
    """
    n = first.shape[-3]
    nfft = 2 ** math.ceil(math.log2(2 * n))
    shifted = np.zeros_like(last)
    shifted[..., 1:, :, :] = last[..., :-1, :, :]
    spectrum_y = scipy.fft.rfft(y, nfft, axis=-3)
    out = np.zeros_like(y)
    for column, head, sign in (
        (first, first[..., 0, :, :], 1.0),
        (shifted, last[..., -1, :, :], -1.0),
    ):
        spectrum = scipy.fft.rfft(column, nfft, axis=-3)
        # L(V)^T y: u[j] = sum_k V[k]^T y[j + k], a correlation
        u = scipy.fft.irfft(np.conj(np.swapaxes(spectrum, -1, -2)) @ spectrum_y, nfft, axis=-3)
        w = np.linalg.solve(head[..., None, :, :], u[..., :n, :, :])
        # L(V) w: a causal convolution
        product = scipy.fft.irfft(spectrum @ scipy.fft.rfft(w, nfft, axis=-3), nfft, axis=-3)
        out += sign * product[..., :n, :, :]
    return out

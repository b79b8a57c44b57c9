"""Solving the block-Toeplitz normal equations of BSSEval's distortion filters.

museval's Gram matrix of the delayed reference channels, in delay-major order, is a symmetric
positive (semi-)definite block-Toeplitz matrix `T` with `L` x `L` blocks of `m` x `m` (`L` taps,
`m` = sources x channels): `T[i, j] = R[i - j]` for `i >= j` and `R[j - i]^T` above the
diagonal, `R[k]` the channels' correlation at lag k. The block Levinson recursion solves
`T x = y` in O(L^2 m^3) instead of the O(L^3 m^3) of museval's dense LU (a 4096 x 4096 LU per
estimate for four stereo stems).

Numpy on the CPU: the recursion is a chain of small products, where numpy's per-call cost is
a fraction of torch's and a GPU's kernel launches would dominate.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import scipy.fft

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # only makes the recursion slower
    threadpool_limits = None

__all__ = [
    "block_levinson",
    "block_toeplitz_matmul",
    "dense_block_toeplitz",
    "solve_block_toeplitz",
]

EPS = float(np.finfo(float).eps)

# Residual of the Levinson solution, relative to ||y|| + ||T|| ||x||, above which it is refined
# (a backward-stable dense solve leaves about 1e-15 on the Gram matrices of music, Levinson
# about 1e-14).
RESIDUAL_TOL = 1e-10


def solve_block_toeplitz(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve `T x = y` for a symmetric positive definite block-Toeplitz T.

    Block Levinson recursion, checked by its residual: the recursion is only weakly stable, so
    when the residual is above what a backward-stable solve leaves (on the tracks measured it is
    not), one step of iterative refinement follows, and if that is not enough either (T
    singular to working precision), a dense LU solve as museval does it.

    Args:
        blocks: `[..., L, m, m]`, `T[i, j] = blocks[i - j]` for `i >= j` and
            `blocks[j - i]^T` above the diagonal.
        rhs: `[..., L, m, r]`.

    Returns:
        `x[..., L, m, r]`.
    """
    # An upper bound of ||T||_2 for the residual test.
    norms = np.linalg.norm(blocks, axis=(-2, -1))
    norm = np.max(norms[..., 0] + 2 * norms[..., 1:].sum(-1))

    def accurate(x: np.ndarray) -> tuple[bool, np.ndarray]:
        residual = rhs - block_toeplitz_matmul(blocks, x)
        bound = RESIDUAL_TOL * (np.linalg.norm(rhs) + norm * np.linalg.norm(x))
        return bool(np.isfinite(x).all() and np.linalg.norm(residual) <= bound), residual

    ok = False
    with np.errstate(all="ignore"), _one_blas_thread():
        try:
            x = block_levinson(blocks, rhs)
            ok, residual = accurate(x)
            if not ok and np.isfinite(x).all():
                x = x + block_levinson(blocks, residual)
                ok, _ = accurate(x)
        except np.linalg.LinAlgError:  # a singular leading block
            pass
    if ok:
        return x
    dense = dense_block_toeplitz(blocks)
    shape = rhs.shape
    flat = rhs.reshape(*shape[:-3], -1, shape[-1])
    try:
        return np.linalg.solve(dense, flat).reshape(shape)
    except np.linalg.LinAlgError:
        # Exactly singular to LAPACK (two identical references, say): museval falls back to
        # least squares; a ridge of n eps ||T|| gives the same projections without an SVD
        # (which takes seconds to minutes at this size).
        ridge = dense.shape[-1] * EPS * norm * np.eye(dense.shape[-1])
        return np.linalg.solve(dense + ridge, flat).reshape(shape)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Keep numpy's BLAS on one thread: the recursion's products are small, and waking other
    threads for each made it 12x slower on 2 cores (measured)."""
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def dense_block_toeplitz(blocks: np.ndarray) -> np.ndarray:
    """The block-Toeplitz matrix `[..., L m, L m]` of `solve_block_toeplitz`."""
    *batch, n, m, _ = blocks.shape
    i = np.arange(n)
    lag = i[:, None] - i[None, :]
    full = blocks[..., np.abs(lag), :, :]  # [..., L, L, m, m]
    full = np.where((lag < 0)[:, :, None, None], np.swapaxes(full, -1, -2), full)
    return np.swapaxes(full, -3, -2).reshape(*batch, n * m, n * m)


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


def block_levinson(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
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
    return state[..., : n_blocks * m, 2 * m :].reshape(*batch, n_blocks, m, r)

"""MDX song-level SDR (uSDR; demucs calls it nsdr): one number per song and stem."""

from __future__ import annotations

import numpy as np

from mss.metrics.protocol import prepare

__all__ = ["EPS", "usdr"]

EPS = 1e-7
"""The MDX 2021 starter kit's `delta` (also in demucs `new_sdr`): keeps silent stems finite."""


def usdr(references: np.ndarray, estimates: np.ndarray, eps: float = EPS) -> np.ndarray:
    """`10 log10((sum s^2 + eps) / (sum (s - s_hat)^2 + eps))` over the whole song, all channels.

    Args:
        references, estimates: `[S, T, C]` (museval's layout); estimates are padded or cut to the
            reference length as museval does. Computed in float64.

    Returns:
        float64 `[S]`, in dB. Unlike BSSEval it is defined for silent stems (a silent reference
        with a silent estimate scores 0 dB).
    """
    references, estimates = prepare(references, estimates)
    signal = np.sum(np.square(references), axis=(1, 2))
    error = np.sum(np.square(references - estimates), axis=(1, 2))
    return 10 * np.log10((signal + eps) / (error + eps))

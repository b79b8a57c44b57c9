"""Choose the BSSEval implementation: `museval` (the reference) or `fast` (mss.metrics.bsseval).

Both are called the same way and both follow museval's protocol (`mss.metrics.protocol`:
padding, the NaN rule for silent frames, NaN for sources silent over the whole track, the
vocals/accompaniment pair), so switching `metrics.backend` changes the speed, not the meaning of
the numbers. Each backend is imported when asked for: the fast one never imports museval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from mss.metrics.protocol import TrackScores, run_protocol

__all__ = ["BACKENDS", "Backend", "get_backend"]

BACKENDS = ("museval", "fast")


class Backend(Protocol):
    def __call__(
        self,
        references: np.ndarray,
        estimates: np.ndarray,
        sources: Sequence[str],
        win: int,
        hop: int,
        track_name: str | None = None,
    ) -> TrackScores: ...


def _fast_backend(device: str | None) -> Backend:
    try:
        from mss.metrics import bsseval
    except ImportError as error:
        raise ImportError(f"the fast BSSEval backend is not available ({error})") from error

    def core(references, estimates, sources, win, hop, track_name) -> TrackScores:
        return bsseval.bss_eval_track(
            references, estimates, sources, win, hop, device=device, track_name=track_name or ""
        )

    def fast_bss_eval_track(
        references: np.ndarray,
        estimates: np.ndarray,
        sources: Sequence[str],
        win: int,
        hop: int,
        track_name: str | None = None,
    ) -> TrackScores:
        return run_protocol(references, estimates, sources, win, hop, core, track_name)

    return fast_bss_eval_track


def get_backend(name: str, device: str | None = None) -> Backend:
    """The per-track scorer called `name`.

    Returns a function `(references[S, T, C], estimates[S, T, C], sources, win, hop,
    track_name=None) -> scores[source][metric] -> float64 [frames]`.

    Args:
        name: "museval" or "fast".
        device: where the fast backend computes (None: its default); museval runs on the CPU.
    """
    if name == "museval":
        from mss.metrics.museval_backend import museval_bss_eval_track

        return museval_bss_eval_track
    if name == "fast":
        return _fast_backend(device)
    raise ValueError(f"unknown metrics backend {name!r}; choose one of {', '.join(BACKENDS)}")

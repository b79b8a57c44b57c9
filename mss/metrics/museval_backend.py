"""The reference backend: museval (BSSEval v4) exactly as SiSEC 2018 calls it.

`museval.eval_mus_track` scores a MUSDB track by calling `museval.evaluate(references,
estimates, win=1 s, hop=1 s)` on `[S, T, C]` arrays, which pads or cuts the estimates to the
reference length and runs `metrics.bss_eval` in images mode with the distortion filters fitted
once on the whole track (`framewise_filters=False`). `museval_bss_eval_track` makes the same
call inside `mss.metrics.protocol.run_protocol` (silent sources, the vocals/accompaniment pair),
the rules the fast backend follows too.
"""

from __future__ import annotations

from collections.abc import Sequence

import museval
import numpy as np

from mss.metrics.protocol import TrackScores, run_protocol

__all__ = ["museval_bss_eval_track"]


def _museval_core(
    references: np.ndarray,
    estimates: np.ndarray,
    sources: list[str],
    win: int,
    hop: int,
    track_name: str | None = None,
) -> TrackScores:
    sdr, isr, sir, sar = museval.evaluate(references, estimates, win=win, hop=hop)
    return {
        name: {"SDR": sdr[j], "SIR": sir[j], "ISR": isr[j], "SAR": sar[j]}
        for j, name in enumerate(sources)
    }


def museval_bss_eval_track(
    references: np.ndarray,
    estimates: np.ndarray,
    sources: Sequence[str],
    win: int = 44100,
    hop: int = 44100,
    track_name: str | None = None,
) -> TrackScores:
    """BSSEval v4 per-frame metrics of one track with museval (the reference implementation).

    Args:
        references, estimates: `[S, T, C]` arrays (any float dtype; scored in float64).
        sources: the S source names.
        win, hop: frame length and hop in samples; SiSEC18 uses one second of the track's
            sample rate for both.
        track_name: named in warnings about silent sources.

    Returns:
        `scores[source][metric] -> float64 [frames]`, metrics SDR, SIR, ISR, SAR; NaN where
        museval gives NaN (frames where any source is silent) and for sources silent over the
        whole track.
    """
    return run_protocol(references, estimates, sources, win, hop, _museval_core, track_name)

"""The reference backend: museval (BSSEval v4) exactly as SiSEC 2018 calls it.

`museval.eval_mus_track` scores a MUSDB track by calling `museval.evaluate(references,
estimates, win=1 s, hop=1 s)` on `[S, T, C]` arrays, which pads or cuts the estimates to the
reference length and runs `metrics.bss_eval` in images mode with the distortion filters fitted
once on the whole track (`framewise_filters=False`). This module makes the same call and adds
what museval lacks:

- a source that is silent over the whole track (reference or estimate) makes museval raise
  (sigsep-mus-eval#94); here that source gets NaN in every frame, with a warning naming the track
  and the source, and the other sources are scored without it;
- when both `vocals` and `accompaniment` are targets, museval scores that pair in a run of its
  own (sigsep-mus-eval#65); `source_groups` reproduces that rule so every backend follows it.

The protocol helpers (`prepare`, `silent_sources`, `source_groups`, `run_protocol`) are shared
with the fast backend so that both treat padding, silence and the accompaniment pair alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import museval
import numpy as np
from museval.metrics import Framing

__all__ = [
    "METRICS",
    "TrackScores",
    "evaluate_track",
    "num_frames",
    "prepare",
    "run_protocol",
    "silent_sources",
    "source_groups",
]

METRICS = ("SDR", "SIR", "ISR", "SAR")

TrackScores = dict[str, dict[str, np.ndarray]]
"""Per-frame scores of one track: `scores[source][metric] -> float64 [frames]`."""

Core = Callable[[np.ndarray, np.ndarray, list[str], int, int], TrackScores]
"""Scores non-silent `references[S, T, C]`, `estimates[S, T, C]` jointly, given win and hop."""


def prepare(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check `[S, T, C]` shapes, cast to float64, pad or cut estimates to the reference length.

    float64 because musdb hands museval float64 audio in the SiSEC18 evaluation.
    """
    references = np.asarray(references, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64)
    check_track_shapes(references.shape, estimates.shape)
    return museval.pad_or_truncate(references, estimates)


def check_track_shapes(references: Sequence[int], estimates: Sequence[int]) -> None:
    """Raise a ValueError unless both shapes are `[S, T, C]` with the same S and C."""
    references, estimates = tuple(references), tuple(estimates)
    if len(references) != 3 or len(estimates) != 3:
        raise ValueError(
            "Expected references and estimates of shape (sources, frames, channels). Found: "
            f"{references} and {estimates}"
        )
    if references[0] != estimates[0] or references[2] != estimates[2]:
        raise ValueError(
            f"references {references} and estimates {estimates} differ in their "
            "number of sources or channels"
        )


def silent_sources(audio: np.ndarray) -> np.ndarray:
    """Which sources of `audio[S, T, C]` museval treats as silent: `bool [S]`.

    Same test as `museval.metrics._any_source_silent`, per source: the sum over channels is zero
    at every sample.
    """
    return np.all(np.sum(audio, axis=2) == 0, axis=1)


def num_frames(length: int, win: int, hop: int) -> int:
    """Number of BSSEval frames museval produces for `length` samples."""
    return Framing(win, hop, length).nwin


def source_groups(sources: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Split sources into joint museval runs as `museval.eval_mus_track` does.

    Returns `(evaluated, kept)` index lists: each run scores `evaluated` jointly and keeps the
    results of `kept`. With `vocals` and `accompaniment` both present, the other sources are
    scored with vocals (whose result there is dropped) and vocals/accompaniment as a pair.
    """
    sources = list(sources)
    everything = list(range(len(sources)))
    if not {"vocals", "accompaniment"} <= set(sources):
        return [(everything, everything)]
    vocals, accompaniment = sources.index("vocals"), sources.index("accompaniment")
    groups = []
    rest = [i for i in everything if i != accompaniment]
    if len(rest) >= 2:
        groups.append((rest, [i for i in rest if i != vocals]))
    pair = sorted([vocals, accompaniment])
    groups.append((pair, pair))
    return groups


def run_protocol(
    references: np.ndarray,
    estimates: np.ndarray,
    sources: Sequence[str],
    win: int,
    hop: int,
    core: Core,
    track_name: str | None = None,
) -> TrackScores:
    """Score one track with `core`, following museval's protocol around it.

    Args:
        references, estimates: `[S, T, C]` (museval's layout); estimates are padded or cut to
            the reference length.
        sources: the S source names, in order.
        win, hop: BSSEval frame length and hop in samples (SiSEC18: one second each).
        core: the BSSEval implementation for one joint run.
        track_name: named in warnings.

    Returns:
        `scores[source][metric] -> float64 [frames]` for every source, in `sources` order.
    """
    references, estimates = prepare(references, estimates)
    sources = list(sources)
    if len(sources) != references.shape[0]:
        raise ValueError(f"{len(sources)} source names for {references.shape[0]} sources")
    frames = num_frames(references.shape[1], win, hop)
    nan = np.full(frames, np.nan)
    scores: TrackScores = {name: {m: nan.copy() for m in METRICS} for name in sources}
    where = f"track {track_name!r}" if track_name else "this track"

    silent_ref, silent_est = silent_sources(references), silent_sources(estimates)
    for j, name in enumerate(sources):
        if silent_ref[j] or silent_est[j]:
            which = "reference" if silent_ref[j] else "estimate"
            warnings.warn(
                f"{where}: the {which} of source {name!r} is silent over the whole track; "
                "BSSEval cannot score it (sigsep-mus-eval#94), so its metrics are NaN and the "
                "other sources are scored without it",
                stacklevel=2,
            )
    silent = silent_ref | silent_est

    for evaluated, kept in source_groups(sources):
        evaluated = [j for j in evaluated if not silent[j]]
        kept = [j for j in kept if not silent[j]]
        if not kept:
            continue
        names = [sources[j] for j in evaluated]
        try:
            result = core(references[evaluated], estimates[evaluated], names, win, hop)
        except (ValueError, np.linalg.LinAlgError) as error:
            warnings.warn(
                f"{where}: BSSEval failed on sources {names} ({error}); their metrics are NaN",
                stacklevel=2,
            )
            continue
        for j in kept:
            for metric in METRICS:
                scores[sources[j]][metric] = np.asarray(result[sources[j]][metric], np.float64)
    return scores


def _museval_core(
    references: np.ndarray, estimates: np.ndarray, sources: list[str], win: int, hop: int
) -> TrackScores:
    sdr, isr, sir, sar = museval.evaluate(references, estimates, win=win, hop=hop)
    return {
        name: {"SDR": sdr[j], "SIR": sir[j], "ISR": isr[j], "SAR": sar[j]}
        for j, name in enumerate(sources)
    }


def evaluate_track(
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

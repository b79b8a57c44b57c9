"""museval's evaluation protocol around BSSEval, shared by both backends (no museval import).

SiSEC 2018 scores a MUSDB track with `museval.eval_mus_track`, which calls
`museval.evaluate(references, estimates, win=1 s, hop=1 s)` on `[S, T, C]` arrays: estimates
are padded with zeros or cut to the reference length, and frames start every `hop` samples,
whole frames only. This module holds those rules and what museval lacks, so that `museval` and
`fast` (mss.metrics.bsseval) treat padding, silence and the accompaniment pair alike:

- a source that is silent over the whole track (reference or estimate) makes museval raise
  (sigsep-mus-eval#94); here that source gets NaN in every frame, with a warning naming the track
  and the source, and the other sources are scored without it;
- when both `vocals` and `accompaniment` are targets, museval scores that pair in a run of its
  own (sigsep-mus-eval#65); `source_groups` reproduces that rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "METRICS",
    "Core",
    "TrackScores",
    "check_track_shapes",
    "num_frames",
    "prepare",
    "run_protocol",
    "silent_sources",
    "source_groups",
]

METRICS = ("SDR", "SIR", "ISR", "SAR")
"""The BSSEval v4 metrics, in the order of museval's JSON and of mss's tables."""

TrackScores = dict[str, dict[str, np.ndarray]]
"""Per-frame scores of one track: `scores[source][metric] -> float64 [frames]`."""


class Core(Protocol):
    """One joint BSSEval run on non-silent `references[S, T, C]`, `estimates[S, T, C]`."""

    def __call__(
        self,
        references: np.ndarray,
        estimates: np.ndarray,
        sources: list[str],
        win: int,
        hop: int,
        track_name: str | None,
    ) -> TrackScores: ...


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


def prepare(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check `[S, T, C]` shapes, cast to float64, pad or cut estimates to the reference length.

    As `museval.pad_or_truncate` (zeros at the end). float64 because musdb hands museval float64
    audio in the SiSEC18 evaluation.
    """
    references = np.asarray(references, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64)
    check_track_shapes(references.shape, estimates.shape)
    length = references.shape[1]
    if estimates.shape[1] > length:
        estimates = estimates[:, :length]
    elif estimates.shape[1] < length:
        estimates = np.pad(estimates, [(0, 0), (0, length - estimates.shape[1]), (0, 0)])
    return references, estimates


def silent_sources(audio: np.ndarray) -> np.ndarray:
    """Which sources of `audio[S, T, C]` museval treats as silent: `bool [S]`.

    Same test as `museval.metrics._any_source_silent`, per source: the sum over channels is zero
    at every sample.
    """
    return np.all(np.sum(audio, axis=2) == 0, axis=1)


def num_frames(length: int, win: int, hop: int) -> int:
    """Number of BSSEval frames museval's `Framing(win, hop, length)` yields for `length` samples.

    Frames start at `k * hop` and only whole ones count; one frame over everything when
    `win >= length`.
    """
    return (length - win + hop) // hop if win < length else 1


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
            result = core(references[evaluated], estimates[evaluated], names, win, hop, track_name)
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

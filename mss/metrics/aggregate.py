"""From per-frame scores of many tracks to the numbers papers and leaderboards report.

- SiSEC18 (museval `EvalStore`): median over the frames of each track, NaN frames skipped, then
  the median over tracks. Papers call it "median of frames, median of tracks".
- Mean over tracks of the same per-track medians, as demucs reports next to it.
- MDX song-level SDR (uSDR): mean over songs of the per-song value (see `mss.metrics.usdr`).

The "average" row is the plain mean over sources of each source's aggregate, so a source that
could not be scored on any track makes it NaN rather than silently dropping out of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mss.metrics.protocol import METRICS, TrackScores

__all__ = ["AVERAGE", "Summary", "frame_medians", "nanmedian", "summarize"]

AVERAGE = "average"


def nanmedian(values, axis: int | None = None):
    """Median skipping NaN (museval's pandas median); NaN for an empty or all-NaN slice, silently.

    A float for `axis=None`, else an array over the other axes.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's all-NaN-slice warning
        median = np.nanmedian(np.asarray(values, dtype=np.float64), axis=axis)
    return float(median) if axis is None else median


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


def frame_medians(scores: TrackScores) -> dict[str, dict[str, float]]:
    """Median over frames, NaN frames skipped: `medians[source][metric]` (NaN if no frame)."""
    return {
        source: {metric: nanmedian(values[metric]) for metric in METRICS}
        for source, values in scores.items()
    }


@dataclass
class Summary:
    """The evaluation of one separator on a set of tracks.

    Attributes:
        sisec18: index sources + "average", columns SDR SIR ISR SAR: median over tracks of the
            per-track frame medians (the SiSEC18 / museval number).
        mean_over_tracks: same layout, mean over tracks of the per-track frame medians.
        usdr: index sources + "average": MDX song-level SDR, mean over songs.
        per_track: one row per (track, source): the frame medians and the song's uSDR.
    """

    sisec18: pd.DataFrame
    mean_over_tracks: pd.DataFrame
    usdr: pd.Series
    per_track: pd.DataFrame

    @property
    def sources(self) -> list[str]:
        return [s for s in self.sisec18.index if s != AVERAGE]

    @property
    def tracks(self) -> list[str]:
        return list(dict.fromkeys(self.per_track["track"]))

    def table(self) -> pd.DataFrame:
        """SiSEC18 SDR/SIR/ISR/SAR with the uSDR as a fifth column (rows: sources + average)."""
        table = self.sisec18.copy()
        table["uSDR"] = self.usdr
        return table

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-serialisable; NaN stays float NaN)."""
        return {
            "tracks": self.tracks,
            "sisec18": self.sisec18.to_dict(orient="index"),
            "mean_over_tracks": self.mean_over_tracks.to_dict(orient="index"),
            "usdr": self.usdr.to_dict(),
        }


def summarize(
    track_scores: Mapping[str, TrackScores],
    track_usdr: Mapping[str, Mapping[str, float]],
    sources: Sequence[str] | None = None,
) -> Summary:
    """Aggregate per-frame scores and per-song uSDR of several tracks.

    Args:
        track_scores: `track_scores[track][source][metric] -> [frames]`.
        track_usdr: `track_usdr[track][source] -> dB`, for the same tracks.
        sources: row order (default: the first track's sources).
    """
    if not track_scores:
        raise ValueError("no tracks to summarise")
    if set(track_usdr) != set(track_scores):
        raise ValueError("per-frame scores and uSDR cover different tracks")
    if sources is None:
        sources = list(next(iter(track_scores.values())))
    sources = list(sources)

    rows = []
    for track, scores in track_scores.items():
        medians = frame_medians(scores)
        for source in sources:
            if source not in medians:
                raise ValueError(f"track {track!r} has no scores for source {source!r}")
            rows.append(
                {
                    "track": track,
                    "source": source,
                    **medians[source],
                    "uSDR": float(track_usdr[track][source]),
                }  # fmt: skip
            )
    per_track = pd.DataFrame(rows, columns=["track", "source", *METRICS, "uSDR"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        grouped = per_track.groupby("source", sort=False)
        sisec18 = grouped[list(METRICS)].agg(nanmedian).reindex(sources)
        mean_over_tracks = grouped[list(METRICS)].agg(_nanmean).reindex(sources)
        usdr = grouped["uSDR"].agg(_nanmean).reindex(sources)
    sisec18.loc[AVERAGE] = sisec18.loc[sources].mean(skipna=False)
    mean_over_tracks.loc[AVERAGE] = mean_over_tracks.loc[sources].mean(skipna=False)
    usdr.loc[AVERAGE] = usdr.loc[sources].mean(skipna=False)
    for frame in (sisec18, mean_over_tracks):
        frame.index.name = "source"
        frame.columns.name = None
    usdr.index.name = "source"
    usdr.name = "uSDR"
    return Summary(sisec18, mean_over_tracks, usdr, per_track)

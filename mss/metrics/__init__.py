"""Evaluation metrics: BSSEval v4 (museval protocol), uSDR, aggregation and reports.

Per track, a backend (`get_backend("museval" | "fast")`) turns `references[S, T, C]` and
`estimates[S, T, C]` into `scores[source][metric] -> [frames]`, both under the rules of
`mss.metrics.protocol` (padding, silence, the vocals/accompaniment pair); `summarize` aggregates
many tracks the SiSEC18 way; `write_track_json` stores one museval JSON per track;
`save_summary` writes the tables and plots. museval itself is imported only by the `museval`
backend and the JSON functions that need it.
"""

from mss.metrics.aggregate import Summary, frame_medians, nanmedian, summarize
from mss.metrics.backends import BACKENDS, get_backend
from mss.metrics.museval_json import read_track_json, write_track_json
from mss.metrics.protocol import METRICS, TrackScores
from mss.metrics.report import print_summary, save_summary
from mss.metrics.usdr import usdr

__all__ = [
    "BACKENDS",
    "METRICS",
    "Summary",
    "TrackScores",
    "frame_medians",
    "get_backend",
    "nanmedian",
    "print_summary",
    "read_track_json",
    "save_summary",
    "summarize",
    "usdr",
    "write_track_json",
]

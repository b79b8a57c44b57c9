"""One museval JSON file per track, the format SiSEC18 results are published in.

The file is written by museval's own `TrackStore` (same keys, frame times, 5-decimal
quantisation, infinities stored as NaN), so museval's tools (`EvalStore.add_eval_dir`,
`json2df`) and the sigsep analysis notebooks read it unchanged. It validates against
`musdb.schema.json` from the museval package. mss adds one top-level key, `"mss"`, that the
schema allows and museval ignores: the song-level uSDR per source and how the scores were made,
so that a resumed evaluation can rebuild its summary from these files alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema
import numpy as np
import simplejson

from mss.metrics.protocol import METRICS, TrackScores

if TYPE_CHECKING:
    import museval

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "read_track_json",
    "schema",
    "track_store",
    "validate_track_json",
    "write_track_json",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    A reader (or a resumed run) sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def schema() -> dict:
    """`musdb.schema.json` as shipped in the museval package."""
    import museval  # here, not at the top: `mss.metrics` loads without museval

    path = Path(museval.__path__[0]) / "musdb.schema.json"
    return json.loads(path.read_text())


def validate_track_json(data: Mapping) -> None:
    """Raise `jsonschema.ValidationError` unless `data` (a parsed track JSON) fits the schema."""
    jsonschema.validate(data, schema())


def track_store(
    track_name: str, scores: TrackScores, win: float = 1.0, hop: float = 1.0
) -> museval.TrackStore:
    """museval's `TrackStore` holding `scores[source][metric] -> [frames]`; win/hop in seconds."""
    import museval

    store = museval.TrackStore(track_name=track_name, win=win, hop=hop)
    for source, values in scores.items():
        store.add_target(
            target_name=source,
            values={metric: np.asarray(values[metric], np.float64).tolist() for metric in METRICS},
        )
    return store


def write_track_json(
    path: str | Path,
    track_name: str,
    scores: TrackScores,
    win: float = 1.0,
    hop: float = 1.0,
    extra: Mapping | None = None,
) -> None:
    """Validate and atomically write the museval JSON of one track.

    Args:
        path: the `.json` file (museval names it after the track).
        track_name: the track.
        scores: `scores[source][metric] -> [frames]`.
        win, hop: frame length and hop in seconds (stored as each frame's duration and time).
        extra: stored under the top-level key `"mss"` (plain JSON values; NaN allowed).
    """
    store = track_store(track_name, scores, win, hop)
    if extra is not None:
        store.scores["mss"] = dict(extra)
    store.validate()
    atomic_write_text(path, store.json)


def read_track_json(path: str | Path) -> tuple[TrackScores, dict]:
    """Read a track JSON: `(scores[source][metric] -> float64 [frames], extra)`.

    `extra` is the `"mss"` entry (empty for files written by museval itself).
    """
    path = Path(path)
    try:
        data = simplejson.loads(path.read_text(), allow_nan=True)
        validate_track_json(data)
        scores: TrackScores = {
            target["name"]: {
                metric: np.array(
                    [float(f["metrics"][metric]) for f in target["frames"]], dtype=np.float64
                )
                for metric in METRICS
            }
            for target in data["targets"]
        }
    except (ValueError, KeyError, TypeError, jsonschema.ValidationError) as error:
        raise ValueError(f"{path}: not a valid museval track JSON ({error!r})") from error
    return scores, data.get("mss", {})

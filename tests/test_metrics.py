"""Metrics agree with museval: per-frame scores, NaN rules, JSON, aggregation; uSDR; reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import museval
import numpy as np
import pandas as pd
import pytest
import simplejson
from rich.console import Console

from mss.metrics import METRICS, get_backend, summarize, usdr
from mss.metrics.museval_backend import museval_bss_eval_track
from mss.metrics.museval_json import (
    atomic_write_text,
    read_track_json,
    schema,
    write_track_json,
)
from mss.metrics.protocol import source_groups
from mss.metrics.report import markdown, print_summary, save_summary

RATE = 4000  # 1 s frames of 4000 samples: museval stays fast
SOURCES = ["bass", "vocals"]
# museval solves a (S * C * 512)^2 system per track whatever its length: tests use 2 sources
# and mono where stereo adds nothing, to stay at a second or two per call.


def music_like(seed: int, sources: int = 2, seconds: float = 3.3, channels: int = 2):
    """References and estimates `[S, T, C]`: tones + noise, estimates with leakage and noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    refs = np.stack(
        [
            np.stack(
                [
                    np.sin(2 * np.pi * (110 * (j + 1) + 7 * c) * t)
                    * (1 + 0.5 * np.sin(t * (j + 1)))
                    for c in range(channels)
                ],
                axis=-1,
            )  # fmt: skip
            + 0.3 * rng.standard_normal((n, channels))
            for j in range(sources)
        ]
    )
    leak = np.roll(refs, 1, axis=0)
    ests = refs + 0.3 * leak + 0.2 * rng.standard_normal(refs.shape)
    # a filtered copy, so that the distortion filters have something to fit
    ests[:, 1:] += 0.2 * refs[:, :-1]
    return refs, ests


def fake_musdb_track(name: str, sources, refs: np.ndarray, rate: int = RATE):
    """What museval.eval_mus_track reads from a musdb track: targets, rate, name, subset."""
    targets = OrderedDict((s, SimpleNamespace(audio=refs[j])) for j, s in enumerate(sources))
    return SimpleNamespace(name=name, targets=targets, rate=rate, subset="test")


def museval_track_store(name, sources, refs, ests, rate=RATE) -> museval.TrackStore:
    """museval's own SiSEC18 path for one track: eval_mus_track with 1 s windows and hops."""
    track = fake_musdb_track(name, sources, refs, rate)
    return museval.eval_mus_track(track, {s: ests[j] for j, s in enumerate(sources)})


# ---------------------------------------------------------------------------------- backend


def test_museval_backend_equals_museval_evaluate():
    refs, ests = music_like(0)
    ours = get_backend("museval")(refs, ests, SOURCES, RATE, RATE, track_name="t")
    sdr, isr, sir, sar = museval.evaluate(refs, ests, win=RATE, hop=RATE)
    for j, source in enumerate(SOURCES):
        for metric, expected in zip(METRICS, (sdr, sir, isr, sar), strict=True):
            np.testing.assert_array_equal(ours[source][metric], expected[j])
            assert ours[source][metric].dtype == np.float64
    assert len(sdr[0]) == 3  # 3.3 s -> three whole 1 s frames, as museval frames it


def test_museval_backend_pads_and_cuts_estimates_like_museval():
    refs, ests = music_like(1, channels=1)
    shorter = ests[:, :-900].astype(np.float32)
    longer = np.pad(ests, [(0, 0), (0, 500), (0, 0)])
    padded = np.pad(shorter, [(0, 0), (0, 900), (0, 0)]).astype(np.float64)
    for given, scored in ((shorter, padded), (longer, ests)):
        ours = museval_bss_eval_track(refs, given, SOURCES, RATE, RATE)
        sdr, _, _, _ = museval.evaluate(refs, scored, win=RATE, hop=RATE)
        np.testing.assert_array_equal(ours["bass"]["SDR"], sdr[0])


def test_museval_backend_equals_eval_mus_track():
    refs, ests = music_like(2)
    store = museval_track_store("song", SOURCES, refs, ests)
    ours = museval_bss_eval_track(refs, ests, SOURCES, RATE, RATE)
    for target in store.scores["targets"]:
        for metric in METRICS:
            expected = [float(f["metrics"][metric]) for f in target["frames"]]
            np.testing.assert_allclose(ours[target["name"]][metric], expected, atol=5e-6)


def test_silent_frame_is_nan_for_every_source():
    refs, ests = music_like(3, channels=1)
    refs[0, RATE : 2 * RATE] = 0  # bass silent in the second frame only
    ours = museval_bss_eval_track(refs, ests, SOURCES, RATE, RATE)
    for source in SOURCES:
        assert np.isnan(ours[source]["SDR"][1]) and np.isfinite(ours[source]["SDR"][[0, 2]]).all()
    sdr, _, _, _ = museval.evaluate(refs, ests, win=RATE, hop=RATE)
    np.testing.assert_array_equal(ours["vocals"]["SDR"], sdr[1])


@pytest.mark.parametrize("where", ["reference", "estimate"])
def test_silent_source_gives_nan_and_a_warning(where):
    sources = ["drums", "bass", "vocals"]
    refs, ests = music_like(4, sources=3, channels=1)
    if where == "reference":
        refs[1] = 0
    else:
        ests[1] = 0
    with pytest.raises(ValueError):  # what museval does on its own (sigsep-mus-eval#94)
        museval.evaluate(refs, ests, win=RATE, hop=RATE)
    with pytest.warns(UserWarning, match=rf"'Song A'.*{where} of source 'bass' is silent"):
        ours = museval_bss_eval_track(refs, ests, sources, RATE, RATE, track_name="Song A")
    for metric in METRICS:
        assert np.isnan(ours["bass"][metric]).all() and len(ours["bass"][metric]) == 3
    # the others are scored as museval scores them without the silent source
    sdr, isr, sir, sar = museval.evaluate(refs[[0, 2]], ests[[0, 2]], win=RATE, hop=RATE)
    np.testing.assert_array_equal(ours["drums"]["SDR"], sdr[0])
    np.testing.assert_array_equal(ours["vocals"]["SAR"], sar[1])


def test_all_silent_gives_nan_everywhere():
    refs, ests = music_like(5)
    refs[:] = 0
    with pytest.warns(UserWarning, match="silent"):
        ours = museval_bss_eval_track(refs, ests, SOURCES, RATE, RATE, track_name="x")
    assert all(np.isnan(ours[s][m]).all() for s in SOURCES for m in METRICS)


def test_vocals_and_accompaniment_are_scored_as_museval_does():
    sources = ["drums", "vocals", "accompaniment"]
    assert source_groups(sources) == [([0, 1], [0]), ([1, 2], [1, 2])]
    assert source_groups(["vocals", "accompaniment"]) == [([0, 1], [0, 1])]
    refs, ests = music_like(6, sources=3, channels=1)
    store = museval_track_store("song", sources, refs, ests)
    ours = museval_bss_eval_track(refs, ests, sources, RATE, RATE)
    assert [t["name"] for t in store.scores["targets"]] == ["drums", "vocals", "accompaniment"]
    for target in store.scores["targets"]:
        expected = [float(f["metrics"]["SIR"]) for f in target["frames"]]
        np.testing.assert_allclose(ours[target["name"]]["SIR"], expected, atol=5e-6)


def test_bad_shapes_and_unknown_backend():
    refs, ests = music_like(7)
    with pytest.raises(ValueError, match="sources or channels"):
        museval_bss_eval_track(refs, ests[:1], SOURCES, RATE, RATE)
    with pytest.raises(ValueError, match="source names"):
        museval_bss_eval_track(refs, ests, SOURCES[:1], RATE, RATE)
    with pytest.raises(ValueError, match="shape"):
        museval_bss_eval_track(refs[0], ests[0], SOURCES, RATE, RATE)
    with pytest.raises(ValueError, match="unknown metrics backend 'nope'"):
        get_backend("nope")


def test_fast_backend_agrees_with_museval_through_the_same_protocol():
    pytest.importorskip("mss.metrics.bsseval")
    refs, ests = music_like(8)
    refs[0, 2 * RATE : 3 * RATE] = 0
    fast = get_backend("fast", device="cpu")(refs, ests, SOURCES, RATE, RATE, track_name="t")
    ref = get_backend("museval")(refs, ests, SOURCES, RATE, RATE, track_name="t")
    for source in SOURCES:
        for metric in METRICS:
            np.testing.assert_array_equal(
                np.isnan(fast[source][metric]), np.isnan(ref[source][metric])
            )
            atol = 1e-4 if metric == "SDR" else 1e-2
            np.testing.assert_allclose(fast[source][metric], ref[source][metric], atol=atol)


# ------------------------------------------------------------------------------------ uSDR


def test_usdr_hand_computed():
    ref = np.ones((3, 4, 2))  # sum s^2 = 8 per source
    est = np.stack([0.5 * ref[0], ref[1], np.zeros((4, 2))])
    expected = [
        10 * np.log10((8 + 1e-7) / (2 + 1e-7)),  # error 4 * 2 * 0.25 = 2: about 6.0206 dB
        10 * np.log10((8 + 1e-7) / 1e-7),  # perfect: finite thanks to eps (79.03 dB)
        10 * np.log10((8 + 1e-7) / (8 + 1e-7)),  # silent estimate: 0 dB
    ]
    np.testing.assert_allclose(usdr(ref, est), expected, rtol=1e-12)
    assert abs(usdr(ref, est)[0] - 6.0206) < 1e-4
    # a silent source with a silent estimate is 0 dB, not NaN
    assert usdr(np.zeros((1, 5, 2)), np.zeros((1, 5, 2)))[0] == 0.0
    # estimates are padded/cut to the reference length
    assert usdr(ref, est[:, :2])[0] == pytest.approx(10 * np.log10((8 + 1e-7) / (5 + 1e-7)))


# ------------------------------------------------------------------------------ museval JSON


def random_scores(rng, sources, frames, nan_frames=()):
    scores = {s: {m: rng.normal(5, 3, frames) for m in METRICS} for s in sources}
    for s in sources:
        for m in METRICS:
            scores[s][m][list(nan_frames)] = np.nan
    return scores


def test_json_validates_and_matches_museval_trackstore(tmp_path):
    ours = random_scores(np.random.default_rng(9), ["drums", *SOURCES], 3, nan_frames=[1])
    ours["drums"]["SIR"][0] = np.inf  # museval stores infinities as NaN
    path = tmp_path / "tracks" / "song.json"
    write_track_json(path, "song", ours, extra={"usdr": {"drums": 1.5}})
    data = simplejson.loads(path.read_text(), allow_nan=True)
    jsonschema.validate(data, schema())
    assert data["museval_version"] == museval.version._version
    frame = data["targets"][1]["frames"][2]
    assert frame["time"] == 2.0 and frame["duration"] == 1.0

    # the same content as museval's TrackStore of the same scores
    store = museval.TrackStore("song", win=1.0, hop=1.0)
    for source in ours:
        store.add_target(source, {m: ours[source][m].tolist() for m in METRICS})
    reference = simplejson.loads(store.json, allow_nan=True)
    assert json.dumps(data["targets"]) == json.dumps(reference["targets"])
    # museval's own reader takes it
    df = museval.aggregate.json2df(data, "song")
    assert set(df["target"]) == set(ours) and len(df) == 3 * 4 * 3

    scores, extra = read_track_json(path)
    assert extra["usdr"] == {"drums": 1.5}
    assert np.isnan(scores["drums"]["SIR"][0])
    np.testing.assert_allclose(scores["bass"]["SAR"], ours["bass"]["SAR"], atol=5e-6)


def test_invalid_json_is_reported(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"targets": "nope"}')
    with pytest.raises(ValueError, match="not a valid museval track JSON"):
        read_track_json(path)
    path.write_text("{truncated")
    with pytest.raises(ValueError, match="bad.json"):
        read_track_json(path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "song.json"
    atomic_write_text(path, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_track_json(path, "song", random_scores(np.random.default_rng(0), ["a"], 3))
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["song.json"]  # no temporary file left behind


# ----------------------------------------------------------------------------- aggregation


def test_summary_equals_museval_evalstore(tmp_path):
    rng = np.random.default_rng(0)
    sources = ["drums", "bass", "other", "vocals"]
    # 4 tracks (even: the median over tracks averages the middle two), NaN frames, one source
    # NaN on a whole track (silent there), one all-NaN track for a source
    tracks = {f"track{i}": random_scores(rng, sources, 7 + i, nan_frames=[i]) for i in range(4)}
    for metric in METRICS:
        tracks["track2"]["bass"][metric][:] = np.nan
    track_usdr = {name: {s: float(rng.normal(4, 2)) for s in sources} for name in tracks}

    evalstore = museval.EvalStore(frames_agg="median", tracks_agg="median")
    mean_store = museval.EvalStore(frames_agg="median", tracks_agg="mean")
    stored = {}
    for name, scores in tracks.items():
        write_track_json(tmp_path / f"{name}.json", name, scores, extra={"usdr": track_usdr[name]})
        stored[name], _ = read_track_json(tmp_path / f"{name}.json")
        store = museval.TrackStore(name, win=1.0, hop=1.0)
        for source in sources:
            store.add_target(source, {m: scores[source][m].tolist() for m in METRICS})
        evalstore.add_track(store)
        mean_store.add_track(store)

    summary = summarize(stored, track_usdr, sources)
    medians = evalstore.agg_frames_tracks_scores().unstack()
    means = mean_store.agg_frames_tracks_scores().unstack()
    for source in sources:
        for metric in METRICS:
            assert summary.sisec18.loc[source, metric] == pytest.approx(
                medians.loc[source, metric], abs=1e-12
            )
            assert summary.mean_over_tracks.loc[source, metric] == pytest.approx(
                means.loc[source, metric], abs=1e-12
            )
    for metric in METRICS:
        assert summary.sisec18.loc["average", metric] == pytest.approx(
            medians.loc[sources, metric].mean(), abs=1e-12
        )
    for source in sources:
        assert summary.usdr[source] == pytest.approx(
            np.mean([u[source] for u in track_usdr.values()])
        )
    assert summary.usdr["average"] == pytest.approx(summary.usdr[sources].mean())
    assert summary.tracks == list(tracks)
    assert len(summary.per_track) == 16
    table = summary.table()
    assert list(table.columns) == [*METRICS, "uSDR"] and list(table.index) == [*sources, "average"]


def test_summary_average_is_nan_when_a_source_is_never_scored():
    nan = {m: np.full(3, np.nan) for m in METRICS}
    ok = {m: np.arange(3.0) for m in METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy all-NaN RuntimeWarnings either
        summary = summarize({"t": {"a": ok, "b": nan}}, {"t": {"a": 1.0, "b": 2.0}})
    assert summary.sisec18.loc["a", "SDR"] == 1.0
    assert np.isnan(summary.sisec18.loc["b", "SDR"]) and np.isnan(
        summary.sisec18.loc["average", "SDR"]
    )


def test_summary_rejects_mismatched_inputs():
    ok = {"a": {m: np.arange(3.0) for m in METRICS}}
    with pytest.raises(ValueError, match="different tracks"):
        summarize({"t": ok}, {"u": {"a": 1.0}})
    with pytest.raises(ValueError, match="no scores for source 'b'"):
        summarize({"t": ok}, {"t": {"a": 1.0}}, sources=["a", "b"])
    with pytest.raises(ValueError, match="no tracks"):
        summarize({}, {})


# --------------------------------------------------------------------------------- reports


def test_reports_are_written(tmp_path):
    rng = np.random.default_rng(1)
    sources = ["vocals", "accompaniment"]
    tracks = {f"t{i}": random_scores(rng, sources, 5) for i in range(3)}
    summary = summarize(tracks, {n: {s: 3.0 + i for i, s in enumerate(sources)} for n in tracks})
    paths = save_summary(summary, tmp_path)
    for name in ("summary.md", "summary.csv", "summary.json", "per_track.csv"):
        assert (tmp_path / name).is_file()
    for metric in (*METRICS, "uSDR"):
        assert (tmp_path / f"boxplot_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["boxplot_SDR"] == tmp_path / "boxplot_SDR.png"

    md = (tmp_path / "summary.md").read_text()
    assert "| source | SDR | SIR | ISR | SAR | uSDR |" in md
    assert f"| vocals | {summary.sisec18.loc['vocals', 'SDR']:.3f} |" in md
    long = pd.read_csv(tmp_path / "summary.csv")
    value = long.query("aggregate == 'sisec18' and source == 'average' and metric == 'SIR'")
    assert value["value"].item() == pytest.approx(summary.sisec18.loc["average", "SIR"])
    per_track = pd.read_csv(tmp_path / "per_track.csv")
    assert list(per_track.columns) == ["track", "source", *METRICS, "uSDR"] and len(per_track) == 6
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["usdr"]["accompaniment"] == pytest.approx(4.0)
    assert markdown(summary).startswith("# Evaluation")

    console = Console(record=True, width=120)
    print_summary(summary, console=console)
    text = console.export_text()
    assert "accompaniment" in text and "average" in text and "uSDR" in text


def test_fast_backend_never_imports_museval():
    # In a fresh interpreter: `mss.metrics` and the fast path must not load museval (slow to
    # import, and not needed to score).
    code = """
import sys
import numpy as np
import mss.metrics.bsseval
from mss.metrics import get_backend
rng = np.random.default_rng(0)
refs = rng.standard_normal((2, 3000, 2))
ests = refs + 0.1 * rng.standard_normal(refs.shape)
scores = get_backend("fast")(refs, ests, ["a", "b"], 1000, 1000)
assert np.isfinite(scores["a"]["SIR"]).all()
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "museval")
assert not loaded, loaded
"""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr

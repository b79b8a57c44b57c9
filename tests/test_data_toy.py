"""Toy generator: deterministic, exact mixture, cached atomically."""

import json

import numpy as np
import pytest
import soundfile as sf

from mss.data.index import DatasetError
from mss.data.toy import MANIFEST, ensure_toy_dataset, make_toy_dataset

SOURCES = ["drums", "bass", "other", "vocals"]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def test_deterministic_and_independent_of_track_count(tmp_path):
    a = _files(make_toy_dataset(tmp_path / "a", n_train=2, n_test=1, seconds=1.0, seed=3))
    b = _files(make_toy_dataset(tmp_path / "b", n_train=2, n_test=1, seconds=1.0, seed=3))
    assert a == b and len(a) == 15
    c = _files(make_toy_dataset(tmp_path / "c", n_train=1, n_test=0, seconds=1.0, seed=3))
    assert c.items() <= a.items()  # a song depends on (seed, subset, index) only
    d = _files(make_toy_dataset(tmp_path / "d", n_train=1, n_test=0, seconds=1.0, seed=4))
    assert d["train/toy-train-00/vocals.wav"] != a["train/toy-train-00/vocals.wav"]


def test_layout_and_mixture_is_sum(tiny_musdb_root):
    for folder in sorted((tiny_musdb_root / "train").iterdir()):
        info = sf.info(str(folder / "mixture.wav"))
        assert (info.samplerate, info.channels, info.frames) == (44100, 2, 3 * 44100)
        assert info.subtype == "PCM_16"
        stems = [sf.read(folder / f"{s}.wav", dtype="float32")[0] for s in SOURCES]
        mix = sf.read(folder / "mixture.wav", dtype="float32")[0]
        np.testing.assert_array_equal(sum(stems), mix)
        np.testing.assert_array_equal(stems[3] + stems[2] + stems[0] + stems[1], mix)
        levels = [np.sqrt(np.mean(s**2)) for s in stems]
        assert min(levels) > 0.01  # every stem is audible
        assert np.abs(mix).max() <= 0.9 + 1e-4


def test_stems_have_distinct_registers(tiny_musdb_root):
    """The separation task is learnable: each stem's energy sits in its own band."""
    folder = tiny_musdb_root / "test" / "toy-test-00"
    centroid = {}
    for s in SOURCES:
        x = sf.read(folder / f"{s}.wav")[0].mean(1)
        spec = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / 44100)
        centroid[s] = (spec * freqs).sum() / spec.sum()
    assert centroid["bass"] < 200 < centroid["other"] < centroid["vocals"] < centroid["drums"]


def test_ensure_generates_once_and_regenerates_on_change(tmp_path):
    root = tmp_path / "toy"
    ensure_toy_dataset(root, n_train=1, n_test=1, seconds=0.5)
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["n_train"] == 1 and manifest["sources"] == SOURCES
    marker = root / "train" / "toy-train-00" / "marker"
    marker.touch()
    ensure_toy_dataset(root, n_train=1, n_test=1, seconds=0.5)
    assert marker.exists()  # reused, not regenerated
    ensure_toy_dataset(root, n_train=2, n_test=1, seconds=0.5)
    assert not marker.exists() and (root / "train" / "toy-train-01").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temp folders left


def test_ensure_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "song.wav").touch()
    with pytest.raises(DatasetError, match="not a generated toy dataset"):
        ensure_toy_dataset(tmp_path / "mine", n_train=1, n_test=1, seconds=0.5)
    assert (tmp_path / "mine" / "song.wav").exists()


def test_sources_must_partition_the_parts(tmp_path):
    with pytest.raises(ValueError, match="disjoint groups"):
        make_toy_dataset(tmp_path, n_train=1, n_test=0, seconds=0.5, sources=["vocals", "bass"])
    with pytest.raises(ValueError, match="disjoint groups"):
        make_toy_dataset(tmp_path, 1, 0, 0.5, sources=["vocals", "drums", "accompaniment"])

"""Track index: layout, validation split, and every bad input named in one DatasetError."""

import numpy as np
import pytest
from conftest import TINY_SOURCES, noise

from mss.data.audio import read_stems
from mss.data.index import (
    DatasetError,
    Track,
    index_tracks,
    musdb_validation_tracks,
    split_tracks,
)


def test_index_tiny_musdb(tiny_musdb_root):
    train = index_tracks(tiny_musdb_root, "train", TINY_SOURCES)
    test = index_tracks(tiny_musdb_root, "test", TINY_SOURCES)
    assert [t.name for t in train] == [f"toy-train-0{i}" for i in range(4)]
    assert [t.name for t in test] == ["toy-test-00", "toy-test-01"]
    track = train[0]
    assert isinstance(track, Track)
    assert (track.subset, track.sample_rate, track.channels) == ("train", 44100, 2)
    assert track.num_frames == 3 * 44100
    assert track.file("vocals") == tiny_musdb_root / "train" / "toy-train-00" / "vocals.wav"
    with pytest.raises(AttributeError):  # frozen: tracks are shared by workers
        track.name = "x"


def test_split_tracks(tiny_musdb_root, tiny_validation_tracks):
    tracks = index_tracks(tiny_musdb_root, "train", TINY_SOURCES)
    train, valid = split_tracks(tracks, tiny_validation_tracks)
    assert [t.name for t in valid] == tiny_validation_tracks
    assert len(train) == 3 and not {t.name for t in train} & set(tiny_validation_tracks)
    assert split_tracks(tracks, []) == (tracks, [])
    with pytest.raises(DatasetError, match="Actions - One Minute Smile"):
        split_tracks(tracks, musdb_validation_tracks())


def test_musdb_validation_tracks():
    names = musdb_validation_tracks()
    assert len(names) == 14 and len(set(names)) == 14
    assert "Actions - One Minute Smile" in names and "Traffic Experiment - Sirens" in names


def test_custom_sources(write_tree):
    root = write_tree({"train/Song": {"vocals": noise(), "accompaniment": noise()}}, fill=False)
    with pytest.raises(DatasetError, match="mixture.wav"):
        index_tracks(root, "train", ["vocals", "accompaniment"])
    write_tree({"train/Song": {"mixture": noise()}}, root=root, fill=False)
    (track,) = index_tracks(root, "train", ["vocals", "accompaniment"])
    assert read_stems(track, ["vocals", "accompaniment"]).shape == (2, 2, 22050)


def _error(root, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        index_tracks(root, "train", TINY_SOURCES, **kwargs)
    return str(info.value)


def test_missing_or_empty_root(tmp_path):
    assert str(tmp_path / "nope") in _error(tmp_path / "nope")
    assert "'train' folder" in _error(tmp_path)
    (tmp_path / "train").mkdir()
    assert "no track folders" in _error(tmp_path)
    (tmp_path / "train" / ".hidden-tmp").mkdir()  # e.g. an interrupted writer's temp folder
    assert "no track folders" in _error(tmp_path)


@pytest.mark.parametrize(
    "stems, bad_file, what",
    [
        ({"vocals": None}, "vocals.wav", "missing"),
        ({"mixture": None}, "mixture.wav", "missing"),
        ({"bass": noise(0.4)}, "bass.wav", "frames"),
        ({"other": (noise(), 22050)}, "other.wav", "sample rate 22050"),
        ({"drums": b"RIFF\x00\x00\x00\x00WAVEjunk"}, "drums.wav", "corrupt"),
        ({"drums": b""}, "drums.wav", "corrupt"),
        ({"vocals": np.zeros((2, 0), np.float32)}, "vocals.wav", "no audio frames"),
        ({"vocals": noise(channels=1)}, "vocals.wav", "mono"),
        ({"bass": noise(channels=3)}, "bass.wav", "3 channels"),
    ],
)
def test_bad_track_names_track_and_file(write_tree, stems, bad_file, what):
    root = write_tree({"train/Good Song": {}, "train/Bad Song": stems})
    message = _error(root)
    assert "Bad Song" in message and bad_file in message and what in message
    assert "Good Song" not in message
    assert str(root / "train" / "Bad Song" / bad_file) in message


def test_truncated_file_is_a_length_mismatch(write_tree):
    root = write_tree({"train/Song": {}})
    path = root / "train" / "Song" / "drums.wav"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # libsndfile reports the frames actually there
    message = _error(root)
    assert "drums.wav" in message and "frames" in message


def test_all_problems_in_one_error(write_tree):
    root = write_tree({"train/A": {"vocals": None}, "train/B": {"bass": b"junk"}})
    message = _error(root)
    assert message.startswith("2 problem(s)")
    assert "'A'" in message and "'B'" in message


def test_mono_refused_or_upmixed(write_tree):
    mono = {s: noise(channels=1, seed=i) for i, s in enumerate(["mixture", *TINY_SOURCES])}
    root = write_tree({"train/Mono": mono})
    assert "data.mono=upmix" in _error(root)
    (track,) = index_tracks(root, "train", TINY_SOURCES, mono="upmix")
    assert track.channels == 2
    stems = read_stems(track, TINY_SOURCES)
    assert stems.shape == (4, 2, 22050)
    np.testing.assert_array_equal(stems[:, 0], stems[:, 1])
    np.testing.assert_array_equal(stems[1, 0], mono["bass"][0])

    # one mono stem in a stereo track: refused (channel counts differ) or upmixed
    root = write_tree({"train/Mixed": {"vocals": noise(channels=1)}})
    assert "vocals.wav" in _error(root)
    (track,) = index_tracks(root, "train", TINY_SOURCES, mono="upmix")
    assert read_stems(track, ["vocals"]).shape == (1, 2, 22050)
    with pytest.raises(ValueError, match="mono must be one of"):
        index_tracks(root, "train", TINY_SOURCES, mono="drop")


def test_wrong_expected_sample_rate(tiny_musdb_root):
    with pytest.raises(DatasetError, match="sample rate 44100 Hz, expected 48000 Hz"):
        index_tracks(tiny_musdb_root, "train", TINY_SOURCES, sample_rate=48000)

"""Partial reads and atomic writes."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mss.data.audio import read_audio, read_mixture, read_stems, write_wav_atomic
from mss.data.index import DatasetError, index_tracks

SOURCES = ["drums", "bass", "other", "vocals"]


def test_partial_read_equals_slice_of_full_read(tiny_musdb_root):
    track = index_tracks(tiny_musdb_root, "train", SOURCES)[1]
    full = read_stems(track, SOURCES)
    assert full.dtype == np.float32 and full.shape == (4, 2, track.num_frames)
    for start, stop in [(0, 1), (12345, 56789), (track.num_frames - 7, track.num_frames)]:
        part = read_stems(track, SOURCES, start, stop)
        np.testing.assert_array_equal(part, full[..., start:stop])
        np.testing.assert_array_equal(
            read_mixture(track, start, stop), read_mixture(track)[:, start:stop]
        )


def test_toy_mixture_is_sum_of_stems(tiny_musdb_root):
    for track in index_tracks(tiny_musdb_root, "test", SOURCES):
        np.testing.assert_array_equal(read_mixture(track), read_stems(track, SOURCES).sum(0))


def test_read_past_the_end_names_the_file(tiny_musdb_root):
    track = index_tracks(tiny_musdb_root, "train", SOURCES)[0]
    with pytest.raises(DatasetError, match="drums.wav.*truncated"):
        read_stems(track, SOURCES, track.num_frames - 10, track.num_frames + 10)


def test_write_wav_atomic(tmp_path):
    audio = np.random.default_rng(0).uniform(-2, 2, (2, 1000)).astype(np.float32)
    path = write_wav_atomic(tmp_path / "sub" / "est.wav", torch.from_numpy(audio), 44100)
    np.testing.assert_array_equal(read_audio(path), audio)  # float32: no clipping
    write_wav_atomic(path, audio[:, :10], 44100, subtype="PCM_16")
    assert sf.info(str(path)).frames == 10
    assert sorted(p.name for p in path.parent.iterdir()) == ["est.wav"]  # no temp file left
    with pytest.raises(ValueError, match="channel, frames"):
        write_wav_atomic(path, audio[0], 44100)


def test_write_wav_atomic_keeps_old_file_on_failure(tmp_path):
    path = write_wav_atomic(tmp_path / "a.wav", np.zeros((2, 100), np.float32), 44100)
    with pytest.raises(Exception):  # noqa: B017 - any soundfile error will do
        write_wav_atomic(path, np.zeros((2, 100), np.float32), 44100, subtype="NOT_A_SUBTYPE")
    assert sf.info(str(path)).frames == 100
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]

"""Training chunks (determinism, remix, silence rejection) and full-track datasets."""

import numpy as np
import pytest
import torch

from mss.data.audio import read_mixture, read_stems
from mss.data.datasets import ChunkDataset, ChunkSampler, TrackDataset, TrackSampler
from mss.data.index import index_tracks
from mss.data.toy import make_toy_dataset

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def tracks(tiny_musdb_root):
    return index_tracks(tiny_musdb_root, "train", SOURCES)


def test_chunk_shape_and_determinism(tracks):
    ds = ChunkDataset(tracks, SOURCES, segment=0.5, samples_per_epoch=8, seed=1)
    assert len(ds) == 8
    x = ds[3]
    assert x.dtype == torch.float32 and x.shape == (4, 2, 22050)
    again = ChunkDataset(tracks, SOURCES, segment=0.5, samples_per_epoch=8, seed=1)
    torch.testing.assert_close(again[3], x, rtol=0, atol=0)
    torch.testing.assert_close(ds[(0, 3)], x, rtol=0, atol=0)
    assert not torch.equal(ds[4], x)
    ds.set_epoch(1)  # a new epoch draws new chunks; keys carry their epoch too
    assert not torch.equal(ds[3], x)
    torch.testing.assert_close(ds[(0, 3)], x, rtol=0, atol=0)
    other_seed = ChunkDataset(tracks, SOURCES, segment=0.5, samples_per_epoch=8, seed=2)
    assert not torch.equal(other_seed[3], x)


def test_chunk_is_an_aligned_slice(tracks):
    ds = ChunkDataset(tracks, SOURCES, segment=0.25, samples_per_epoch=16, remix_probability=0)
    for i in range(16):
        stems, where = ds.sample(i)
        track, start = where[0]
        assert all(w == (track, start) for w in where)
        np.testing.assert_array_equal(stems, read_stems(track, SOURCES, start, start + ds.frames))
        # toy data: the chunk's stems sum exactly to the mixture file at the same place
        np.testing.assert_array_equal(stems.sum(0), read_mixture(track, start, start + ds.frames))


def test_remix_takes_each_source_from_its_own_place(tracks):
    ds = ChunkDataset(tracks, SOURCES, segment=0.25, samples_per_epoch=16, remix_probability=1)
    mixed_tracks = 0
    for i in range(16):
        stems, where = ds.sample(i)
        for s, (source, (track, start)) in enumerate(zip(SOURCES, where, strict=True)):
            np.testing.assert_array_equal(
                stems[s], read_stems(track, [source], start, start + ds.frames)[0]
            )
        mixed_tracks += len({t.name for t, _ in where}) > 1
    assert mixed_tracks >= 8  # 4 tracks: most remixes combine several songs


def test_remix_probability_is_respected(tracks):
    ds = ChunkDataset(tracks, SOURCES, segment=0.01, samples_per_epoch=400, remix_probability=0.3)
    remixed = sum(len(set(ds.sample(i)[1])) > 1 for i in range(400))
    assert 80 < remixed < 160


def test_silence_rejection(write_tree):
    sr = 44100
    loud = 0.5 * np.ones((2, sr), np.float32)
    silent_then_loud = np.concatenate([np.zeros((2, 3 * sr), np.float32), loud], axis=1)
    stems = {s: silent_then_loud for s in ["mixture", *SOURCES]}
    root = write_tree({"train/Quiet Start": stems}, fill=False)
    tracks = index_tracks(root, "train", SOURCES)
    kwargs = dict(segment=0.5, samples_per_epoch=32, seed=0)
    plain = ChunkDataset(tracks, SOURCES, **kwargs)
    checked = ChunkDataset(
        tracks, SOURCES, silence_threshold=-40.0, max_silence_retries=50, **kwargs
    )
    assert sum(float(plain[i].abs().max()) == 0 for i in range(32)) > 10
    assert all(float(checked[i].abs().max()) > 0 for i in range(32))
    # bounded: a silent dataset still yields chunks
    zeros = {s: np.zeros((2, sr), np.float32) for s in ["mixture", *SOURCES]}
    tracks = index_tracks(write_tree({"train/Silent": zeros}, fill=False), "train", SOURCES)
    silent = ChunkDataset(tracks, SOURCES, silence_threshold=-40.0, max_silence_retries=3, **kwargs)
    assert float(silent[0].abs().max()) == 0


def test_short_tracks_are_padded(write_tree):
    root = write_tree({"train/Short": {}}, seconds=0.1)
    ds = ChunkDataset(index_tracks(root, "train", SOURCES), SOURCES, 0.5, 4)
    x = ds[0]
    assert x.shape == (4, 2, 22050) and torch.all(x[..., 4410:] == 0)


def test_custom_sources_without_code_change(tmp_path):
    sources = ["vocals", "accompaniment"]
    root = make_toy_dataset(tmp_path, n_train=2, n_test=1, seconds=1.0, sources=sources)
    tracks = index_tracks(root, "train", sources)
    stems, where = ChunkDataset(tracks, sources, 0.5, 4).sample(0)
    assert stems.shape == (2, 2, 22050)
    track, start = where[0]
    np.testing.assert_array_equal(stems.sum(0), read_mixture(track, start, start + 22050))
    mix, full = TrackDataset(tracks, sources)[1]
    assert full.shape == (2, 2, 44100) and torch.equal(full.sum(0), mix)


def test_sampler_splits_epochs_and_ranks(tracks):
    ds = ChunkDataset(tracks, SOURCES, segment=0.1, samples_per_epoch=10)
    sampler = ChunkSampler(ds)
    assert list(sampler) == [(0, i) for i in range(10)]
    sampler.set_epoch(3)
    assert list(sampler) == [(3, i) for i in range(10)] and len(sampler) == 10
    ranks = [list(ChunkSampler(ds, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # equal steps on every rank
    keys = [k for r in ranks for k in r]
    assert len(set(keys)) == 12 and {i for _, i in keys} >= set(range(10))


def test_sampler_skips_the_resumed_part_of_one_epoch_only(tracks):
    ds = ChunkDataset(tracks, SOURCES, segment=0.1, samples_per_epoch=10)
    rank = ChunkSampler(ds, num_replicas=2, rank=1)
    rank.set_epoch(4)
    rank.skip_next(2)  # 2 of this rank's 5 keys were trained before the resume
    assert list(rank) == [(4, 5), (4, 7), (4, 9)]
    assert len(rank) == 5  # Lightning counts the skipped batches itself
    assert list(rank) == [(4, i) for i in (1, 3, 5, 7, 9)]  # the next epoch is whole


def test_track_sampler_marks_the_padding_repeats():
    tracks = list(range(5))  # any sized dataset
    ranks = [TrackSampler(tracks, num_replicas=3, rank=r) for r in range(3)]
    assert [list(r) for r in ranks] == [[0, 3], [1, 4], [2, 0]]  # equal steps: track 0 twice
    repeats = [[r.is_repeat(position) for position in range(len(r))] for r in ranks]
    assert repeats == [[False, False], [False, False], [False, True]]
    single = TrackSampler(tracks)
    assert list(single) == tracks and not any(single.is_repeat(i) for i in range(5))


def test_track_dataset(tiny_musdb_root):
    tracks = index_tracks(tiny_musdb_root, "test", SOURCES)
    ds = TrackDataset(tracks, ["vocals", "drums"])
    assert len(ds) == 2
    mix, stems = ds[0]
    assert mix.shape == (2, 3 * 44100) and stems.shape == (2, 2, 3 * 44100)
    assert mix.dtype == stems.dtype == torch.float32
    np.testing.assert_array_equal(stems[0].numpy(), read_stems(tracks[0], ["vocals"])[0])

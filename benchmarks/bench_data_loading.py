"""Training-chunk loading throughput: ChunkDataset (partial reads) against whole-track loading
through ``musdb``, on a MUSDB18-HQ-layout folder.

    python benchmarks/bench_data_loading.py --root /work/bench_data/bench

Each method produces chunks of ``--segment`` seconds (default 6 s), stereo, one per source
(4 by default), from random tracks of ``train/`` and random offsets, in one process:

- ``ChunkDataset``: this project's loader; reads only the chunk's frames with soundfile.
- ``ChunkDataset, remix + silence``: the same with the training defaults (remix 0.5,
  silence threshold -60 dBFS).
- ``musdb whole track``: ``musdb.DB(root, is_wav=True)``, ``track.sources[s].audio`` for
  every source (musdb decodes the whole file), then a random chunk is sliced out, as naive
  loaders do.
- ``musdb chunk_start/duration``: musdb's own partial loading (open-unmix's loader), for
  reference.

All files are read once first so that every method runs on a warm page cache (cold-cache
numbers depend on the disk; partial reads gain even more there). Numbers are chunks per
second, best of ``--repeats`` rounds (each round times every method once).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mss.data.datasets import ChunkDataset
from mss.data.index import index_tracks

SOURCES = ["drums", "bass", "other", "vocals"]


def warm_cache(root: Path) -> int:
    """Read every WAV of ``root/train`` once; returns the bytes read."""
    total = 0
    for path in sorted((root / "train").rglob("*.wav")):
        total += len(path.read_bytes())
    return total


def timed(make_chunk, start: int, count: int) -> float:
    """Chunks/s of ``count`` calls to ``make_chunk(i)``, ``i`` from ``start``."""
    begin = time.perf_counter()
    for i in range(start, start + count):
        chunk = make_chunk(i)
        assert chunk.shape[0] == len(SOURCES)
    return count / (time.perf_counter() - begin)


def chunk_dataset_method(root: Path, segment: float, **kwargs):
    tracks = index_tracks(root, "train", SOURCES)
    dataset = ChunkDataset(tracks, SOURCES, segment=segment, samples_per_epoch=10**9, **kwargs)
    return lambda i: dataset[i].numpy()


def musdb_methods(root: Path, segment: float, seed: int):
    import musdb  # imports stempeg, which needs ffmpeg on PATH

    tracks = musdb.DB(root=str(root), is_wav=True, subsets="train").tracks
    rng = np.random.default_rng(seed)

    def whole_track(_):
        track = tracks[rng.integers(len(tracks))]
        frames = int(segment * track.rate)
        audio = [track.sources[s].audio for s in SOURCES]  # [T, C] each, whole track
        start = int(rng.integers(0, audio[0].shape[0] - frames + 1))
        return np.stack([a[start : start + frames].T for a in audio]).astype(np.float32)

    def chunked(_):
        track = tracks[rng.integers(len(tracks))]
        track.chunk_duration = segment
        track.chunk_start = float(rng.uniform(0, track.duration - segment))
        chunk = np.stack([track.sources[s].audio.T for s in SOURCES]).astype(np.float32)
        track.chunk_start, track.chunk_duration = 0, None
        return chunk

    return whole_track, chunked, tracks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="MUSDB18-HQ-layout root")
    parser.add_argument("--segment", type=float, default=6.0, help="chunk length, seconds")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per ChunkDataset run")
    parser.add_argument("--musdb-chunks", type=int, default=12, help="chunks per musdb run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    size = warm_cache(args.root)
    whole_track, chunked, tracks = musdb_methods(args.root, args.segment, args.seed)
    seconds = np.mean([t.duration for t in tracks])
    print(
        f"{args.root}: {len(tracks)} train tracks, mean {seconds:.0f} s, "
        f"{size / 2**20:.0f} MiB of WAV (warm cache); chunks of {args.segment:g} s, "
        f"{len(SOURCES)} stems, one process"
    )
    methods = [
        (
            "ChunkDataset (partial reads)",
            chunk_dataset_method(args.root, args.segment),
            args.chunks,
        ),
        (
            "ChunkDataset, remix 0.5 + silence -60 dB",
            chunk_dataset_method(
                args.root, args.segment, remix_probability=0.5, silence_threshold=-60.0
            ),
            args.chunks,
        ),
        ("musdb whole track, then slice", whole_track, args.musdb_chunks),
        ("musdb chunk_start/chunk_duration", chunked, args.musdb_chunks),
    ]
    # rounds interleave the methods, so that load from other processes hits them alike
    results = dict.fromkeys((name for name, _, _ in methods), 0.0)
    for r in range(args.repeats):
        for name, fn, count in methods:
            results[name] = max(results[name], timed(fn, r * count, count))
    baseline = results["musdb whole track, then slice"]
    print("| method | chunks/s | vs musdb whole track |")
    print("|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} | {rate / baseline:.1f}x |")


if __name__ == "__main__":
    main()

"""Torch datasets: random training chunks read with partial reads, and full tracks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from mss.data.audio import read_mixture, read_stems
from mss.data.index import DatasetError, Track, check_mono_policy


class ChunkDataset(Dataset):
    """Random fixed-length training chunks, ``samples_per_epoch`` of them per epoch.

    Item ``i`` of epoch ``e`` is drawn from a random generator seeded with ``(seed, e, i)``
    alone, so it is the same whatever the worker, the number of workers or the process that
    reads it, and data-loader workers need no seeding of their own. The epoch comes either from
    :meth:`set_epoch` (item keys are ints) or with the key itself (``dataset[(epoch, i)]``, what
    :class:`ChunkSampler` yields; this keeps working with persistent workers, whose copies of
    the dataset never see ``set_epoch``).

    A chunk starts at a position drawn uniformly over all the training audio (so a track is
    picked with probability proportional to its length). With probability
    ``remix_probability`` the chunk is a *remix*: each source comes from its own random track
    and offset, which creates new mixtures that are still exact sums of their stems. Only the
    frames of the chunk are read from disk. Tracks shorter than the segment are zero-padded.

    When ``silence_threshold`` (dBFS) is set, a chunk whose mixture (sum of its stems) has an
    RMS level below it is drawn again, at most ``max_silence_retries`` times; the last draw is
    kept, so a quiet dataset slows nothing down by more than that bound.

    Items are float32 tensors ``[S, C, T]`` with ``T = round(segment * sample_rate)``.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        sources: Sequence[str],
        segment: float,
        samples_per_epoch: int,
        remix_probability: float = 0.0,
        silence_threshold: float | None = None,
        seed: int = 0,
        mono: str = "upmix",
        max_silence_retries: int = 10,
    ):
        if not tracks:
            raise DatasetError("ChunkDataset needs at least one training track")
        rates = {t.sample_rate for t in tracks}
        channels = {t.channels for t in tracks}
        if len(rates) != 1 or len(channels) != 1:
            raise DatasetError(
                f"all tracks must share one sample rate and channel count, got rates {rates}, "
                f"channels {channels}"
            )
        if segment <= 0 or samples_per_epoch <= 0:
            raise ValueError(
                "segment and samples_per_epoch must be positive, "
                f"got {segment} and {samples_per_epoch}"
            )
        if not 0.0 <= remix_probability <= 1.0:
            raise ValueError(f"remix_probability must be in [0, 1], got {remix_probability}")
        self.tracks = list(tracks)
        self.sources = list(sources)
        self.sample_rate = rates.pop()
        self.channels = channels.pop()
        self.segment = float(segment)
        self.frames = int(round(segment * self.sample_rate))
        self.samples_per_epoch = int(samples_per_epoch)
        self.remix_probability = float(remix_probability)
        self.silence_threshold = silence_threshold
        self.max_silence_retries = int(max_silence_retries)
        self.seed = int(seed)
        self.mono = check_mono_policy(mono)
        self.epoch = 0
        lengths = np.array([t.num_frames for t in self.tracks], dtype=np.float64)
        self._track_probs = lengths / lengths.sum()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch used by integer keys (see the class docstring)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _position(self, rng: np.random.Generator) -> tuple[Track, int]:
        track = self.tracks[rng.choice(len(self.tracks), p=self._track_probs)]
        offset = int(rng.integers(0, max(0, track.num_frames - self.frames) + 1))
        return track, offset

    def _read(self, track: Track, offset: int, sources: Sequence[str]) -> np.ndarray:
        stop = min(offset + self.frames, track.num_frames)
        audio = read_stems(track, sources, offset, stop, self.mono)
        if audio.shape[-1] < self.frames:  # track shorter than a segment
            audio = np.pad(audio, ((0, 0), (0, 0), (0, self.frames - audio.shape[-1])))
        return audio

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[Track, int]]]:
        if rng.random() < self.remix_probability:
            where = [self._position(rng) for _ in self.sources]
            stems = np.stack(
                [self._read(t, o, [s])[0] for (t, o), s in zip(where, self.sources, strict=True)]
            )
            return stems, where
        track, offset = self._position(rng)
        return self._read(track, offset, self.sources), [(track, offset)] * len(self.sources)

    def _silent(self, stems: np.ndarray) -> bool:
        if self.silence_threshold is None:
            return False
        mix = stems.sum(0, dtype=np.float64)
        rms = math.sqrt(float(np.mean(mix**2)))
        return 20 * math.log10(rms + 1e-12) < self.silence_threshold

    def sample(self, key: int | tuple[int, int]) -> tuple[np.ndarray, list[tuple[Track, int]]]:
        """The chunk of ``key`` and where each source was read: ``(stems [S, C, T], [(track,
        start frame)] * S)``. The same key always gives the same chunk."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        stems, where = self._draw(rng)
        for _ in range(self.max_silence_retries):
            if not self._silent(stems):
                break
            stems, where = self._draw(rng)
        return stems, where

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(self.sample(key)[0])


class ChunkSampler(DistributedSampler):
    """Yields ``(epoch, index)`` keys of one epoch of a :class:`ChunkDataset`, this rank's share.

    Lightning calls :meth:`set_epoch` on it each epoch, and the epoch travels with every key
    to the workers, persistent or not. Being a ``DistributedSampler``, Lightning keeps it as it
    is under DDP instead of wrapping it: rank ``r`` of ``w`` takes keys ``r, r + w, ...`` up to
    ``ceil(n / w)`` of them, so every rank runs the same number of steps and no chunk repeats.
    """

    def __init__(self, dataset: ChunkDataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = math.ceil(len(dataset) / num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, self.rank + k * self.num_replicas) for k in range(self.num_samples)])

    def __len__(self) -> int:
        return self.num_samples


class TrackSampler(DistributedSampler):
    """This rank's share of the full tracks, in order: rank ``r`` of ``w`` takes ``r, r + w, ...``.

    As ``DistributedSampler`` does, the list is padded by repeating the first tracks so that
    every rank runs as many validation steps (DDP needs them in step). Callers drop those
    repeats from their scores with :meth:`is_repeat`, so a track never counts twice.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def is_repeat(self, position: int) -> bool:
        """Whether the ``position``-th item this rank yields is padding (a repeated track)."""
        return self.rank + position * self.num_replicas >= len(self.dataset)


class TrackDataset(Dataset):
    """Full tracks for validation and testing: ``(mix [C, T], stems [S, C, T])`` float32.

    The mixture is read from ``mixture.wav`` (in real data the stems only approximately sum
    to it), so scores are computed against what a listener hears.
    """

    def __init__(self, tracks: Sequence[Track], sources: Sequence[str], mono: str = "upmix"):
        self.tracks = list(tracks)
        self.sources = list(sources)
        self.mono = check_mono_policy(mono)

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        track = self.tracks[index]
        mix = read_mixture(track, mono=self.mono)
        stems = read_stems(track, self.sources, mono=self.mono)
        return torch.from_numpy(mix), torch.from_numpy(stems)

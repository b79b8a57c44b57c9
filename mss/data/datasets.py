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

    Several dataset roots: pass one track list per root as ``tracks`` and a sampling weight per
    root as ``weights``. Each chunk first draws its root, ``r`` with probability ``weights[r] /
    sum(weights)``, then a position in that root as above. Remixes and silence redraws stay in
    that root, so the weight is exactly the share of chunks (and of every stem) from the root,
    whatever its loudness, and stems from recordings of different origins are never mixed. With
    a single root nothing is drawn for it: the chunks are those of the plain track list.

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
        weights: Sequence[float] | None = None,
    ):
        groups = [list(tracks)] if weights is None else [list(g) for g in tracks]
        weights = [1.0] if weights is None else [float(w) for w in weights]
        if len(weights) != len(groups):
            raise ValueError(f"{len(groups)} track lists but {len(weights)} weights")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"root weights must be positive numbers, got {weights}")
        if not all(groups):
            raise DatasetError("ChunkDataset needs at least one training track (in every root)")
        tracks = [t for g in groups for t in g]
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
        self.tracks = tracks
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
        self._groups = [(g, self._length_probs(g)) for g in groups]
        self._root_probs = np.array(weights) / sum(weights)

    @staticmethod
    def _length_probs(tracks: Sequence[Track]) -> np.ndarray:
        lengths = np.array([t.num_frames for t in tracks], dtype=np.float64)
        return lengths / lengths.sum()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch used by integer keys (see the class docstring)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _position(self, rng: np.random.Generator, root: int) -> tuple[Track, int]:
        tracks, probs = self._groups[root]
        track = tracks[rng.choice(len(tracks), p=probs)]
        offset = int(rng.integers(0, max(0, track.num_frames - self.frames) + 1))
        return track, offset

    def _read(self, track: Track, offset: int, sources: Sequence[str]) -> np.ndarray:
        stop = min(offset + self.frames, track.num_frames)
        audio = read_stems(track, sources, offset, stop, self.mono)
        if audio.shape[-1] < self.frames:  # track shorter than a segment
            audio = np.pad(audio, ((0, 0), (0, 0), (0, self.frames - audio.shape[-1])))
        return audio

    def _draw(
        self, rng: np.random.Generator, root: int
    ) -> tuple[np.ndarray, list[tuple[Track, int]]]:
        if rng.random() < self.remix_probability:
            where = [self._position(rng, root) for _ in self.sources]
            stems = np.stack(
                [self._read(t, o, [s])[0] for (t, o), s in zip(where, self.sources, strict=True)]
            )
            return stems, where
        track, offset = self._position(rng, root)
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
        # one root: no draw, so a single-root dataset keeps the chunks it always had
        root = (
            0 if len(self._groups) == 1 else int(rng.choice(len(self._groups), p=self._root_probs))
        )
        stems, where = self._draw(rng, root)
        for _ in range(self.max_silence_retries):
            if not self._silent(stems):
                break
            stems, where = self._draw(rng, root)
        return stems, where

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(self.sample(key)[0])


class ChunkSampler(DistributedSampler):
    """Yields ``(epoch, index)`` keys of one epoch of a :class:`ChunkDataset`, this rank's share.

    Lightning calls :meth:`set_epoch` on it each epoch, and the epoch travels with every key
    to the workers, persistent or not. Being a ``DistributedSampler``, Lightning keeps it as it
    is under DDP instead of wrapping it: rank ``r`` of ``w`` takes keys ``r, r + w, ...`` up to
    ``ceil(n / w)`` of them, so every rank runs the same number of steps and no chunk repeats.
    Its length stays that of a whole epoch after :meth:`skip_next`: Lightning counts the batches
    a resumed epoch had done before.
    """

    def __init__(self, dataset: ChunkDataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = math.ceil(len(dataset) / num_replicas)
        self._skip = 0

    def skip_next(self, count: int) -> None:
        """Leave out the first `count` keys of this rank's share, in the next iteration only:
        a run resumed mid-epoch goes on with the chunks it had not trained on yet."""
        self._skip = int(count)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip, self._skip = self.epoch, self._skip, 0
        keys = range(skip, self.num_samples)
        return iter([(epoch, self.rank + k * self.num_replicas) for k in keys])

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
        self.tracks = tracks
        self.sources = list(sources)
        self.mono = check_mono_policy(mono)

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        track = self.tracks[index]
        mix = read_mixture(track, mono=self.mono)
        stems = read_stems(track, self.sources, mono=self.mono)
        return torch.from_numpy(mix), torch.from_numpy(stems)

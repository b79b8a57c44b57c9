"""LightningDataModule over a MUSDB18-HQ-layout root, and its embedded toy variant."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import suggested_max_num_workers
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mss.data.augment import compose
from mss.data.datasets import ChunkDataset, ChunkSampler, TrackDataset, TrackSampler
from mss.data.index import (
    DatasetError,
    Track,
    check_mono_policy,
    check_root_stems,
    index_tracks,
    musdb_validation_tracks,
    split_tracks,
)
from mss.data.roots import check_weight, parse_extra_roots
from mss.data.toy import ensure_toy_dataset
from mss.errors import ConfigError

DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")
# num_workers=auto: at most this many training workers per device. 8 load more 6 s chunks than
# even an ideal A100-class GPU trains hdemucs on (BENCHMARKS.md, issue 12); models as small as
# simple_demucs could take more on a fast GPU (set num_workers). Beyond that, workers cost
# memory (each queues two batches, 135 MB each at batch 16) and start-up time.
MAX_AUTO_WORKERS = 8
# Full validation/test tracks are large (a 4 min MUSDB track is ~400 MB as float32 stems and
# mix) and each loader worker prefetches two: more workers would only hold more of them.
MAX_TRACK_WORKERS = 2


def seed_worker(worker_id: int) -> None:
    """Seed numpy's global generator in each worker from torch's per-worker seed.

    The datasets draw from their own ``(seed, epoch, index)`` generators and need none of
    this; it keeps any other code using ``np.random`` in a worker from repeating across
    workers (torch seeds only itself and ``random`` per worker).
    """
    np.random.seed(torch.initial_seed() % 2**32)


def training_position(trainer) -> tuple[int, int]:
    """The epoch the training loader is about to be iterated for, and how many of its batches
    were trained before: both 0 in a fresh run, the checkpoint's values in a resumed one.

    Lightning's own bookkeeping, read the way its loops read it when they restart: a checkpoint
    written at the end of a training batch counts that batch as done (`TrainingEpochLoop.reset`).
    """
    if trainer is None:
        return 0, 0
    fit = trainer.fit_loop
    epoch = fit.epoch_progress.current.processed  # what Lightning passes to set_epoch
    loop = fit.epoch_loop
    if not loop.restarting:
        return epoch, 0
    # the fit loop updates this only after it has set the loaders up; from progress alone
    loop.update_restart_stage()
    done = loop.batch_progress.current.completed + int(loop.restarted_on_train_batch_end)
    return epoch, done


class MusdbDataModule(L.LightningDataModule):
    """Train on random chunks of ``root/train`` (and of extra roots), validate and test on full
    tracks.

    Batches as the LightningModule sees them (after :meth:`on_after_batch_transfer`):

    - train: ``(mix [B, C, T], stems [B, S, C, T])``; the loader yields stems only, the
      augmentations run on the device and the mix is rebuilt as ``stems.sum(1)`` after them;
    - val / test: ``(mix [1, C, T], stems [1, S, C, T])``, whole tracks, the mix read from
      ``mixture.wav``.

    Args:
        root: dataset root with ``train/`` and ``test/``, one folder per track.
        sources: stem names, in the order of the model's outputs; one ``<source>.wav`` each.
        sample_rate: every file must have it (nothing is resampled).
        mono: ``"error"`` refuses mono files, ``"upmix"`` duplicates them to stereo.
        validation_tracks: train-track names held out for validation; ``None`` is MUSDB18's
            standard 14 (from the ``musdb`` package), ``[]`` disables validation.
        segment: training chunk length, seconds.
        samples_per_epoch: training chunks per epoch (over all ranks together).
        remix_probability: probability that a chunk takes each source from its own track.
        silence_threshold: redraw chunks whose mixture RMS is below it (dBFS); ``None``: never.
        batch_size: training batch size (per rank).
        num_workers: data-loader worker processes, or ``"auto"``: one per CPU core available to
            this device's process, less one for the training process, at most
            ``MAX_AUTO_WORKERS`` (Lightning's ``suggested_max_num_workers``, capped).
            Validation and test loaders use at most ``MAX_TRACK_WORKERS`` of them.
        augment: modules applied to training stems ``[B, S, C, T]``, in order.
        seed: seed of the chunk draws (item ``i`` of epoch ``e`` depends on ``(seed, e, i)``).
        pin_memory: ``None`` pins when CUDA is available.
        persistent_workers: keep training workers alive between epochs.
        max_silence_retries: bound on redraws of near-silent chunks.
        root_weight: sampling weight of ``root`` among the training roots.
        extra_roots: more roots to train on, in the layout of ``root`` with the same
            ``sources``: paths, or ``{root, weight, validation_tracks}`` mappings (see
            :mod:`mss.data.roots`). A training chunk comes from a root with probability its
            weight over the sum of the weights (:class:`ChunkDataset`). Validation uses the
            tracks of ``validation_tracks`` of every root (by default none of the extra ones);
            the test split is ``root/test`` alone, and extra roots need no ``test/``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sources: Sequence[str] = DEFAULT_SOURCES,
        sample_rate: int = 44100,
        mono: str = "error",
        validation_tracks: Sequence[str] | None = None,
        segment: float = 6.0,
        samples_per_epoch: int = 6400,
        remix_probability: float = 0.5,
        silence_threshold: float | None = None,
        batch_size: int = 16,
        num_workers: int | str = 0,
        augment: Sequence[nn.Module] | None = None,
        seed: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        max_silence_retries: int = 10,
        root_weight: float = 1.0,
        extra_roots: Sequence[str | os.PathLike | Mapping] | None = (),
    ):
        super().__init__()
        # saved in checkpoints (datamodule_hyper_parameters); the run config is logged elsewhere
        self.save_hyperparameters(ignore=["augment"], logger=False)
        self.root = os.fspath(root)
        self.sources = [str(s) for s in sources]  # a ListConfig from Hydra becomes a list
        self.sample_rate = int(sample_rate)
        self.mono = check_mono_policy(mono)
        self.validation_tracks = (
            None if validation_tracks is None else [str(n) for n in validation_tracks]
        )
        self.segment = float(segment)
        self.samples_per_epoch = int(samples_per_epoch)
        self.remix_probability = float(remix_probability)
        self.silence_threshold = None if silence_threshold is None else float(silence_threshold)
        self.batch_size = int(batch_size)
        self.num_workers = _check_num_workers(num_workers)
        self.augment = compose(augment)
        self.seed = int(seed)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.max_silence_retries = int(max_silence_retries)
        self.root_weight = check_weight(root_weight, "data.root_weight")
        self.extra_roots = parse_extra_roots(extra_roots)
        self._train_groups: list[list[Track]] | None = None
        self._valid_tracks: list[Track] | None = None
        self._test_tracks: list[Track] | None = None

    def _index(self, subset: str, root: str | None = None, key: str = "data.root") -> list[Track]:
        root = self.root if root is None else root
        return index_tracks(root, subset, self.sources, self.sample_rate, self.mono, key=key)

    def setup(self, stage: str | None = None) -> None:
        """Index (and validate) the subsets the stage needs; raises ``DatasetError`` early."""
        if stage in (None, "fit", "validate") and self._train_groups is None:
            if self.extra_roots:  # a root with another stem set: one line, not one per track
                check_root_stems(self.root, "train", self.sources)
                for extra in self.extra_roots:
                    check_root_stems(extra.root, "train", self.sources, f"{extra.key}.root")
            names = self.validation_tracks
            if names is None:
                names = musdb_validation_tracks()
            train, valid = split_tracks(self._index("train"), names)
            groups = [train]
            for extra in self.extra_roots:
                tracks = self._index("train", extra.root, f"{extra.key}.root")
                extra_train, extra_valid = split_tracks(
                    tracks, extra.validation_tracks, f"{extra.key}.validation_tracks"
                )
                if not extra_train:
                    raise DatasetError(
                        f"{extra.key}.validation_tracks holds out every track of "
                        f"{extra.root}/train: none is left to train on"
                    )
                groups.append(extra_train)
                valid += extra_valid
            self._train_groups, self._valid_tracks = groups, valid
        if stage in (None, "test", "predict") and self._test_tracks is None:
            self._test_tracks = self._index("test")

    def train_tracks(self) -> list[Track]:
        """Training tracks of all roots (their train subsets minus the validation tracks)."""
        self.setup("fit")
        return [t for group in self._train_groups for t in group]

    def valid_tracks(self) -> list[Track]:
        """Validation tracks (held out of the train subsets), those of ``root`` first."""
        self.setup("fit")
        return list(self._valid_tracks)

    def test_tracks(self) -> list[Track]:
        """Tracks of the test subset."""
        self.setup("test")
        return list(self._test_tracks)

    def train_dataset(self) -> ChunkDataset:
        self.setup("fit")
        return ChunkDataset(
            self._train_groups,
            self.sources,
            segment=self.segment,
            samples_per_epoch=self.samples_per_epoch,
            remix_probability=self.remix_probability,
            silence_threshold=self.silence_threshold,
            seed=self.seed,
            mono=self.mono,
            max_silence_retries=self.max_silence_retries,
            weights=[self.root_weight] + [extra.weight for extra in self.extra_roots],
        )

    def loader_workers(self) -> int:
        """Training-loader workers: ``num_workers``, with ``"auto"`` resolved for this machine
        and the number of devices the trainer runs on it."""
        if self.num_workers != "auto":
            return self.num_workers
        devices = self.trainer.num_devices if self.trainer else 1
        return min(MAX_AUTO_WORKERS, suggested_max_num_workers(devices))

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        world, rank = self._world_and_rank()
        workers = self.loader_workers()
        # the sampler carries the epoch to the workers and splits chunks between ranks
        sampler = ChunkSampler(dataset, num_replicas=world, rank=rank)
        epoch, batches_done = training_position(self.trainer)
        # Lightning creates the loader's iterator before it sets the sampler's epoch, and loader
        # workers draw their first keys then: a resumed run would start with epoch 0's chunks
        sampler.set_epoch(epoch)
        if batches_done * self.batch_size < len(sampler):  # else Lightning starts a new epoch
            sampler.skip_next(batches_done * self.batch_size)
        # Lightning warns that a run resumed mid-epoch may train on other data; this one does not
        warnings.filterwarnings(
            "ignore", "You're resuming from a checkpoint that ended before the epoch ended"
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=self._loader_generator(),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
        )

    def _loader_generator(self) -> torch.Generator:
        """A loader's own generator for the seed it draws per iteration (for its workers).

        Without one, every new loader iterator draws from torch's global generator, which
        also drives the augmentations: when Lightning sets loaders up in another order on
        resume, the augmentations after the resume would differ from an uninterrupted run's.
        """
        return torch.Generator().manual_seed(self.seed)

    def _world_and_rank(self) -> tuple[int, int]:
        # the samplers split the data between DDP ranks themselves (Lightning keeps them)
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer else (1, 0)

    def _track_loader(self, tracks: list[Track]) -> DataLoader:
        # batch size 1: tracks differ in length; no persistent workers: full tracks are large
        dataset = TrackDataset(tracks, self.sources, self.mono)
        world, rank = self._world_and_rank()
        return DataLoader(
            dataset,
            batch_size=1,
            # our own split, so the padding repeats are known (TrackSampler.is_repeat)
            sampler=TrackSampler(dataset, num_replicas=world, rank=rank),
            num_workers=min(self.loader_workers(), MAX_TRACK_WORKERS),
            worker_init_fn=seed_worker,
            generator=self._loader_generator(),
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list:
        tracks = self.valid_tracks()
        return self._track_loader(tracks) if tracks else []

    def test_dataloader(self) -> DataLoader:
        return self._track_loader(self.test_tracks())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training stems ``[B, S, C, T]`` -> ``(stems.sum(1), augmented stems)``.

        Augmenting here, on the device and after collation, keeps the workers light and
        lets the mix be rebuilt from the augmented stems in one place.
        """
        if isinstance(batch, Tensor):
            if self.trainer is not None and self.trainer.training:
                batch = self.augment(batch)
            return batch.sum(1), batch
        return batch


def _check_num_workers(num_workers) -> int | str:
    if num_workers == "auto":
        return "auto"
    if isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0:
        return num_workers
    raise ConfigError(f"data.num_workers must be an integer >= 0 or auto, got {num_workers!r}")


class ToyDataModule(MusdbDataModule):
    """:class:`MusdbDataModule` on the embedded toy set, generated into ``root`` on first use.

    Args:
        n_train, n_test: number of toy tracks in ``train/`` and ``test/``.
        seconds: length of each toy track.
        toy_seed: seed of the generator (different from ``seed``, which draws chunks).
        **kwargs: as :class:`MusdbDataModule`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        n_train: int = 8,
        n_test: int = 3,
        seconds: float = 16.0,
        toy_seed: int = 0,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.n_train = int(n_train)
        self.n_test = int(n_test)
        self.seconds = float(seconds)
        self.toy_seed = int(toy_seed)

    def prepare_data(self) -> None:
        """Generate the toy set unless it is already there (Lightning runs this on rank 0)."""
        ensure_toy_dataset(
            self.root,
            n_train=self.n_train,
            n_test=self.n_test,
            seconds=self.seconds,
            sample_rate=self.sample_rate,
            seed=self.toy_seed,
            sources=self.sources,
        )

    def setup(self, stage: str | None = None) -> None:
        # Also for callers that skip prepare_data (e.g. building the data module by hand):
        # ensure_toy_dataset only reads the manifest when the set is there, and is safe to race.
        self.prepare_data()
        super().setup(stage)

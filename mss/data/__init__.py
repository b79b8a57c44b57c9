"""Data layer: track index, partial reads, datasets, augmentations, DataModule, toy set.

The DataModule lives in :mod:`mss.data.datamodule` (imports Lightning); this package exports
the light pieces.
"""

from mss.data.audio import read_audio, read_mixture, read_stems, write_wav_atomic
from mss.data.index import (
    DatasetError,
    Track,
    index_tracks,
    musdb_validation_tracks,
    split_tracks,
)
from mss.data.toy import ensure_toy_dataset, make_toy_dataset

__all__ = [
    "DatasetError",
    "Track",
    "ensure_toy_dataset",
    "index_tracks",
    "make_toy_dataset",
    "musdb_validation_tracks",
    "read_audio",
    "read_mixture",
    "read_stems",
    "split_tracks",
    "write_wav_atomic",
]

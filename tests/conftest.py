"""Shared fixtures: a tiny generated MUSDB18-HQ-layout dataset and a writer for custom trees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mss.data.toy import make_toy_dataset, track_names

TINY_SOURCES = ["drums", "bass", "other", "vocals"]
TINY_SAMPLE_RATE = 44100


@pytest.fixture(scope="session")
def tiny_musdb_root(tmp_path_factory) -> Path:
    """Root of a tiny toy set: train/ (4 tracks) and test/ (2 tracks), 3 s, 44.1 kHz stereo.

    Stems are 16-bit ``drums, bass, other, vocals``; ``mixture == sum(stems)`` exactly.
    Track names: ``toy-train-00..03``, ``toy-test-00..01``. Session-scoped: do not modify it.
    """
    root = tmp_path_factory.mktemp("tiny_musdb") / "musdb"
    return make_toy_dataset(root, n_train=4, n_test=2, seconds=3.0, sample_rate=44100, seed=7)


@pytest.fixture(scope="session")
def tiny_validation_tracks() -> list[str]:
    """Validation split for ``tiny_musdb_root``: one of its train tracks."""
    return [track_names("train", 4)[-1]]


def noise(seconds: float = 0.5, channels: int = 2, sample_rate: int = 44100, seed: int = 0):
    """Quiet white noise ``[C, T]`` float32, a stand-in for any stem."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((channels, int(seconds * sample_rate)))).astype(np.float32)


@pytest.fixture
def write_tree(tmp_path) -> Callable[..., Path]:
    """Factory writing a custom MUSDB-layout tree (for bad-input tests); returns its root.

    ``write_tree({"train/Song A": {"mixture": audio, "drums": (audio, 22050), "bass": b"junk"}})``
    where a value is an array ``[C, T]`` (written at 44.1 kHz, float32 WAV), ``(array,
    sample_rate)``, or ``bytes`` written as they are (a corrupt file). Call it again with
    ``root=`` to add to the same tree. Default stems ``mixture`` plus ``TINY_SOURCES`` are filled
    with ``noise()`` when ``fill=True`` and a track's mapping leaves them out; map a stem to
    ``None`` to leave it missing.
    """
    counter = iter(range(1_000_000))

    def write(
        tracks: Mapping[str, Mapping[str, object]],
        root: Path | None = None,
        fill: bool = True,
        seconds: float = 0.5,
    ) -> Path:
        root = Path(root) if root is not None else tmp_path / f"tree{next(counter)}"
        for rel, stems in tracks.items():
            folder = root / rel
            folder.mkdir(parents=True, exist_ok=True)
            if fill:
                stems = {
                    s: noise(seconds, seed=i) for i, s in enumerate(["mixture", *TINY_SOURCES])
                } | dict(stems)
            for stem, value in stems.items():
                path = folder / f"{stem}.wav"
                if value is None:
                    continue
                if isinstance(value, bytes):
                    path.write_bytes(value)
                    continue
                audio, sr = value if isinstance(value, tuple) else (value, TINY_SAMPLE_RATE)
                sf.write(path, np.asarray(audio).T, sr, subtype="FLOAT")
        return root

    return write

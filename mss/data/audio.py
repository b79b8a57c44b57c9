"""Reading stems with partial reads, and writing WAV files atomically."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from mss.data.index import DatasetError, Track, check_mono_policy
from mss.io.read import nonfinite_problem


def read_audio(
    path: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    channels: int | None = None,
    mono: str = "upmix",
) -> np.ndarray:
    """Read frames ``[start, stop)`` of a sound file as float32 ``[C, T]``.

    Only the requested frames are read (``soundfile`` seeks), so a 6 s chunk of a 4 min song
    costs 6 s of I/O. A mono file is duplicated to ``channels`` channels when ``mono="upmix"``.

    Raises:
        DatasetError: the file cannot be read, returns fewer frames than asked (truncated),
            holds NaN or Inf samples, or is mono where mono is refused.
    """
    check_mono_policy(mono)
    try:
        data, rate = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:
        raise DatasetError(f"{path}: cannot read frames {start}:{stop} ({err})") from err
    if stop is not None and data.shape[0] != stop - start:
        raise DatasetError(
            f"{path}: asked for frames {start}:{stop} but got {data.shape[0]} (truncated file?)"
        )
    # a file changed since it was indexed, or a caller that reads without the index
    nonfinite = nonfinite_problem(data.T, start, rate)
    if nonfinite:
        raise DatasetError(f"{path}: {nonfinite}; fix or remove the file")
    audio = data.T  # [C, T]
    if channels is not None and audio.shape[0] != channels:
        if audio.shape[0] != 1 or mono != "upmix":
            raise DatasetError(f"{path}: {audio.shape[0]} channel(s), expected {channels}")
        audio = np.repeat(audio, channels, axis=0)
    return np.ascontiguousarray(audio)


def read_stems(
    track: Track,
    sources: Sequence[str],
    start: int = 0,
    stop: int | None = None,
    mono: str = "upmix",
) -> np.ndarray:
    """Read frames ``[start, stop)`` of each source of ``track``: float32 ``[S, C, T]``."""
    return np.stack([read_audio(track.file(s), start, stop, track.channels, mono) for s in sources])


def read_mixture(
    track: Track, start: int = 0, stop: int | None = None, mono: str = "upmix"
) -> np.ndarray:
    """Read frames ``[start, stop)`` of ``mixture.wav``: float32 ``[C, T]``."""
    return read_audio(track.file("mixture"), start, stop, track.channels, mono)


def write_wav_atomic(
    path: str | os.PathLike,
    audio,
    sample_rate: int,
    subtype: str = "FLOAT",
) -> Path:
    """Write ``audio`` ``[C, T]`` (numpy array or torch tensor) to a WAV file atomically.

    The data goes to a hidden temporary file in the same folder, which is then renamed over
    ``path`` (``os.replace`` is atomic on one file system): a reader, or a rerun after an
    interruption, sees either the old file or the complete new one, never half of one.
    ``subtype="FLOAT"`` (the default) stores float32 as is, with no clipping or quantisation;
    pass ``"PCM_16"`` for 16-bit files.
    """
    path = Path(path)
    if hasattr(audio, "detach"):  # torch.Tensor, without importing torch here
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(
            f"Expected a 2D array with dimensions (channel, frames). Found: {audio.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        sf.write(str(tmp), audio.T, int(sample_rate), subtype=subtype, format="WAV")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

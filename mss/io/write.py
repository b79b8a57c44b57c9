"""Write stems block by block, atomically, with clipping that is never silent.

A `StemWriter` writes one file from blocks ``[C, n]`` as they become final, so memory does not
grow with the song. The data goes to a hidden temporary file in the destination folder
(``.<name>.<random>.tmp``), renamed over the final name with `os.replace` (atomic on one file
system) only when everything is written: a killed run never leaves a half file under the final
name. An exception or `abort` removes the temporary file; only a hard kill (SIGKILL, power
loss) can leave one behind, hidden and never under the final name. `StemSetWriter` does this
for the S stems of one song and renames them together at the end.

Formats (`OutputFormat`):

- ``wav``: ``bit_depth`` 32 (float, the default), 24 or 16 (integer PCM).
- ``flac``: 24 (the default) or 16; FLAC has no float samples, so 32 is refused.
- ``mp3``: the highest constant bit rate of the rate's MPEG version (320 kbit/s at 32-48 kHz,
  160 at 16-24 kHz, 64 at 8-12 kHz), LAME through libsndfile, with the LAME header that lets
  decoders give back exactly the written length (mpg123 and ffmpeg do); ``bit_depth`` does not
  apply and is ignored. MP3 only exists at 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 and 48 kHz
  and in mono or stereo; other rates are refused up front (write wav or flac instead).

Float WAV holds any value, so it is written as it is whatever ``clip`` says. For the formats
that cannot hold samples beyond full scale (|x| > 1), ``clip`` says what happens:

- ``clamp`` (default): such samples are set to +-1; their number is reported (``clipped``).
- ``rescale``: a stem whose peak exceeds 1 is divided by its peak, so its largest sample is
  exactly at full scale and nothing clips (``scale`` reports the gain). The peak is only known
  at the end, so the stem first goes, block by block, to a raw float32 temporary file next to
  the output (4 bytes per sample: 635 MB for an hour of stereo at 44.1 kHz), which a second
  block-wise pass scales and encodes: exact, memory-flat, one extra disk round trip.
- ``none``: samples go to the encoder as they are: integer PCM saturates them at full scale
  (libsndfile), MP3 encodes them beyond full scale and players clip them. They are still
  counted (``clipped``), so nothing clips silently.

MP3 is lossy: its decoded samples can overshoot full scale a little even after clamp/rescale,
which act on the samples given to the encoder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mss.errors import AudioFileError, ConfigError
from mss.utils.paths import write_probe

__all__ = [
    "CLIP_MODES",
    "FORMATS",
    "OutputFormat",
    "StemReport",
    "StemSetWriter",
    "StemWriter",
    "check_output_folder",
]

FORMATS = ("wav", "flac", "mp3")
CLIP_MODES = ("clamp", "rescale", "none")
_BIT_DEPTHS = {"wav": (16, 24, 32), "flac": (16, 24)}
_DEFAULT_BIT_DEPTH = {"wav": 32, "flac": 24}
_SUBTYPES = {16: "PCM_16", 24: "PCM_24", 32: "FLOAT"}
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_PASS_FRAMES = 1 << 16  # frames per block in the rescale pass


@dataclass(frozen=True)
class OutputFormat:
    """How stems are encoded: ``format`` wav|flac|mp3, ``bit_depth``, ``clip`` (module doc).

    ``bit_depth=None`` takes the format's default (wav 32-bit float, flac 24-bit); for mp3 it
    is always None. A combination that cannot work is a `ConfigError` here, before anything
    is separated.
    """

    format: str = "wav"
    bit_depth: int | None = None
    clip: str = "clamp"

    def __post_init__(self) -> None:
        fmt = str(self.format).lower().lstrip(".")
        if fmt not in FORMATS:
            raise ConfigError(f"format={self.format}: choose one of {', '.join(FORMATS)}")
        if self.clip not in CLIP_MODES:
            raise ConfigError(f"clip={self.clip}: choose one of {', '.join(CLIP_MODES)}")
        depth = self.bit_depth
        if fmt == "mp3":
            depth = None  # LAME encodes from float; a bit depth does not apply
        elif depth is None:
            depth = _DEFAULT_BIT_DEPTH[fmt]
        elif depth not in _BIT_DEPTHS[fmt]:
            hint = " (FLAC has no float samples; use format=wav for 32-bit float)" * (
                fmt == "flac" and depth == 32
            )
            raise ConfigError(
                f"bit_depth={depth} with format={fmt}: choose one of "
                f"{', '.join(map(str, _BIT_DEPTHS[fmt]))}{hint}"
            )
        object.__setattr__(self, "format", fmt)
        object.__setattr__(self, "bit_depth", depth)

    @property
    def extension(self) -> str:
        return f".{self.format}"

    @property
    def is_float(self) -> bool:
        """Whether files hold samples beyond full scale as they are (32-bit float WAV)."""
        return self.bit_depth == 32

    def check(self, sample_rate: int, channels: int) -> None:
        """Refuse a sample rate or channel count this format cannot store (`ConfigError`)."""
        if self.format == "mp3":
            if sample_rate not in MP3_SAMPLE_RATES:
                rates = ", ".join(str(r) for r in MP3_SAMPLE_RATES)
                raise ConfigError(
                    f"format=mp3 cannot store {sample_rate} Hz (MP3 rates: {rates}); "
                    "use format=wav or format=flac"
                )
            if channels > 2:
                raise ConfigError(f"format=mp3 stores 1 or 2 channels, not {channels}")

    def _open(self, path: Path, sample_rate: int, channels: int) -> sf.SoundFile:
        if self.format == "mp3":
            # compression_level 0 at constant bit rate: the highest bit rate (320 kbit/s).
            return sf.SoundFile(
                str(path), "w", sample_rate, channels, "MPEG_LAYER_III", format="MP3",
                compression_level=0.0, bitrate_mode="CONSTANT",
            )  # fmt: skip
        return sf.SoundFile(
            str(path), "w", sample_rate, channels, _SUBTYPES[self.bit_depth],
            format=self.format.upper(),
        )  # fmt: skip


@dataclass(frozen=True)
class StemReport:
    """What happened to one written stem.

    ``over_full_scale``: samples (over all channels) given with |x| > 1. ``clipped``: how many
    of them did not reach the file as they were (clamped, or saturated by the format), 0 for
    float WAV and rescale. ``scale``: the gain rescale applied (1.0 otherwise). ``peak``: the
    largest |x| given, before any change.
    """

    path: Path
    frames: int
    peak: float
    over_full_scale: int
    clipped: int
    scale: float


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be created in it.

    Raises:
        AudioFileError: one line naming the folder and why (not a folder, permission, ...).
    """
    folder = Path(folder)
    error = write_probe(folder)
    if error is not None:
        reason = _reason(error)
        raise AudioFileError(f"{folder}: cannot write to this output folder ({reason})") from error
    return folder


class StemWriter:
    """Write one audio file atomically from blocks ``[C, n]`` (module doc).

    Use as a context manager: a clean exit commits (renames the finished file to ``path``), an
    exception aborts (removes the temporary file, and leaves any older file at ``path`` as it
    was). ``report`` is set after `commit`.

    Raises (at construction, before any audio): `ConfigError` for a sample rate or channel count
    the format cannot store; `AudioFileError` naming the folder when it cannot be created or
    written to.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        fmt: OutputFormat | None = None,
    ) -> None:
        self.fmt = OutputFormat() if fmt is None else fmt
        self.path = Path(path)
        if self.path.suffix.lower() != self.fmt.extension:
            raise ValueError(f"{self.path}: the name should end in {self.fmt.extension}")
        self.fmt.check(sample_rate, channels)
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self.report: StemReport | None = None
        self.frames = 0
        self._peak = 0.0
        self._over = 0
        self._file: sf.SoundFile | None = None
        self._raw = None  # the rescale pass's float32 temporary file
        self._tmp = _temp_path(self.path)
        self._raw_tmp = self._tmp.with_suffix(".f32") if self._rescales else None
        self._state = "open"
        check_output_folder(self.path.parent)
        try:
            self._create(self._tmp)
            if self._rescales:
                self._raw = open(self._raw_tmp, "xb")  # closed by _finish or abort
            else:
                self._file = self._encoder(self._tmp)
        except BaseException:
            self.abort()
            raise

    @property
    def _rescales(self) -> bool:
        return self.fmt.clip == "rescale" and not self.fmt.is_float

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` ``[C, n]`` (float; a torch tensor works too) to the stem."""
        if self._state != "open":
            raise RuntimeError(f"{self.path}: write after {self._state}")
        if hasattr(block, "detach"):  # torch.Tensor, without importing torch here
            block = block.detach().cpu().numpy()
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(
                f"Expected a block with dimensions ({self.channels} channels, frames). "
                f"Found: {block.shape}"
            )
        if block.shape[1] == 0:
            return
        magnitude = np.abs(block)
        peak = float(magnitude.max())
        if not np.isfinite(peak):
            bad_frames = (~np.isfinite(block)).any(axis=0)
            frame = int(np.flatnonzero(bad_frames)[0]) + self.frames
            raise ValueError(
                f"{self.path}: cannot write a non-finite sample (NaN/Inf) at "
                f"{frame / self.sample_rate:.3f} s (frame {frame})"
            )
        self._peak = max(self._peak, peak)
        if peak > 1.0:
            self._over += int(np.count_nonzero(magnitude > 1.0))
            if self.fmt.clip == "clamp" and not self.fmt.is_float:
                block = np.clip(block, -1.0, 1.0)
        self.frames += block.shape[1]
        with self._writing():
            if self._raw is not None:
                self._raw.write(np.ascontiguousarray(block.T, dtype="<f4").tobytes())
            else:
                self._file.write(block.T)

    def commit(self) -> StemReport:
        """Finish the file and rename it to ``path``; returns the `StemReport`."""
        self._finish()
        self._publish()
        return self.report

    def abort(self) -> None:
        """Drop everything written: no file at ``path`` from this writer, no temporary left."""
        if self._state == "committed":
            return
        self._state = "aborted"
        for handle in (self._file, self._raw):
            if handle is not None and not handle.closed:
                try:
                    handle.close()
                except Exception:  # an encoder failing to finish: the file is dropped anyway
                    pass
        for tmp in (self._tmp, self._raw_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def __enter__(self) -> StemWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # Two steps so that StemSetWriter can finish every stem before renaming any.
    def _finish(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"{self.path}: commit after {self._state}")
        try:
            if self.frames == 0:
                raise ValueError(f"{self.path}: no frames were written")
            scale = 1.0
            with self._writing():
                if self._raw is not None:
                    self._raw.close()
                    if self._peak > 1.0:
                        scale = 1.0 / self._peak
                    self._rescale_pass(self._peak if self._peak > 1.0 else 1.0)
                    self._raw_tmp.unlink()
                else:
                    self._file.close()
        except BaseException:
            self.abort()
            raise
        lossless_overs = self.fmt.is_float or self._rescales
        self.report = StemReport(
            self.path, self.frames, self._peak, self._over,
            0 if lossless_overs else self._over, scale,
        )  # fmt: skip
        self._state = "finished"

    def _publish(self) -> None:
        if self._state != "finished":
            raise RuntimeError(f"{self.path}: publish before finish ({self._state})")
        try:
            os.replace(self._tmp, self.path)
        except OSError as err:
            self.abort()
            raise AudioFileError(f"{self.path}: cannot write it ({_reason(err)})") from err
        self._state = "committed"

    def _rescale_pass(self, peak: float) -> None:
        """Encode the raw float32 temporary divided by ``peak`` (>= 1), block by block.

        Dividing by the peak itself (not multiplying by its inverse) keeps every |x| / peak <= 1
        exactly: IEEE division is correctly rounded and monotonic, and peak / peak == 1.
        """
        divisor = np.float32(peak)
        with self._encoder(self._tmp) as out, open(self._raw_tmp, "rb") as raw:
            while True:
                data = np.fromfile(raw, dtype="<f4", count=_PASS_FRAMES * self.channels)
                if data.size == 0:
                    break
                out.write(data.reshape(-1, self.channels) / divisor)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write (disk full, quota, I/O error) into one line naming the file."""
        try:
            yield
        except sf.LibsndfileError as err:
            raise AudioFileError(
                f"{self.path}: writing failed ({err.error_string.rstrip('.')}; out of disk space?)"
            ) from err
        except OSError as err:
            raise AudioFileError(f"{self.path}: writing failed ({_reason(err)})") from err

    def _create(self, path: Path) -> None:
        try:
            with open(path, "xb"):
                pass
        except OSError as err:
            raise AudioFileError(
                f"{path.parent}: cannot write to this output folder ({_reason(err)})"
            ) from err

    def _encoder(self, path: Path) -> sf.SoundFile:
        try:
            return self.fmt._open(path, self.sample_rate, self.channels)
        except sf.LibsndfileError as err:
            raise AudioFileError(
                f"{self.path}: cannot write {self.fmt.format} at {self.sample_rate} Hz, "
                f"{self.channels} channel(s) ({err.error_string})"
            ) from err


class StemSetWriter:
    """The S stems of one song: ``write(stems[S, C, n])``, then all are renamed together.

    `commit` first finishes every file (the slow part: encoding, the rescale pass), then
    renames them one after the other; so the final names appear together, all or none, except
    for a hard kill in the few microseconds between two renames. A caller that skips songs
    whose stems all exist therefore never skips a song with a missing or half-written stem.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        sample_rate: int,
        channels: int,
        fmt: OutputFormat | None = None,
    ) -> None:
        if len(set(map(Path, paths))) != len(paths) or not paths:
            raise ValueError(f"Expected distinct output paths, got {list(map(str, paths))}")
        self.writers: list[StemWriter] = []
        self.reports: list[StemReport] | None = None  # set by commit
        try:
            for path in paths:
                self.writers.append(StemWriter(path, sample_rate, channels, fmt))
        except BaseException:
            self.abort()
            raise

    def write(self, stems: np.ndarray) -> None:
        """Append ``stems`` ``[S, C, n]``, one ``[C, n]`` block to each stem in order."""
        if hasattr(stems, "detach"):
            stems = stems.detach().cpu().numpy()
        if np.ndim(stems) != 3 or len(stems) != len(self.writers):
            raise ValueError(
                f"Expected stems with dimensions ({len(self.writers)} stems, channels, frames). "
                f"Found: {np.shape(stems)}"
            )
        try:
            for writer, block in zip(self.writers, stems, strict=True):
                writer.write(block)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> list[StemReport]:
        try:
            for writer in self.writers:
                writer._finish()
            for writer in self.writers:
                writer._publish()
        except BaseException:
            self.abort()
            raise
        self.reports = [writer.report for writer in self.writers]
        return self.reports

    def abort(self) -> None:
        for writer in self.writers:
            writer.abort()

    def __enter__(self) -> StemSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _reason(err: OSError) -> str:
    return err.strerror or str(err)

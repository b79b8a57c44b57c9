"""Read any song block by block: libsndfile first, an ffmpeg subprocess for the rest.

libsndfile (through soundfile) reads WAV, FLAC, OGG Vorbis/Opus and MP3 and tells the exact
length from the header. Whatever it cannot open (m4a/aac, wma, ...) is decoded by ``ffmpeg``
into a pipe of float32 samples when ffmpeg is installed; its length is then only known once the
pipe ends. Either way a song is read in blocks of a fixed number of frames, so memory does not
grow with its length, and every block is checked for NaN/Inf before anyone sees it.

Every problem with the file is one `AudioFileError` line that names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mss.errors import AudioFileError

__all__ = ["AudioInfo", "MAX_CHANNELS", "nonfinite_problem", "probe", "read_audio", "read_blocks"]

MAX_CHANNELS = 2
DEFAULT_BLOCK_FRAMES = 1 << 16
# MPEG-1 layer III frames hold 1152 samples, MPEG-2/2.5 frames 576 (_soundfile_blocks).
_MP3_READ_QUANTUM = 1152
# Seconds ffprobe may take on one file before we call it unreadable.
_PROBE_TIMEOUT_S = 60


@dataclass(frozen=True)
class AudioInfo:
    """What a song is, from its header (or ffprobe).

    ``frames`` is exact when ``frames_exact``: WAV, FLAC and OGG through libsndfile, and MP3
    with a Xing/Info (LAME) header, which LAME, ffmpeg and libsndfile's own encoder write. It is
    an estimate otherwise (MP3 without that header: off by hundreds of frames; anything decoded
    by ffmpeg: ``duration * sample_rate`` from ffprobe) and None when ffprobe gives no duration.
    `read_blocks` yields what the decoder produces; that count is the song's length.
    """

    path: Path
    sample_rate: int
    channels: int
    frames: int | None
    frames_exact: bool
    format: str  # libsndfile's major format ("WAV", "MP3", ...) or ffprobe's format_name
    codec: str  # libsndfile's subtype ("PCM_16", "VORBIS", ...) or ffprobe's codec_name
    backend: str  # "soundfile" or "ffmpeg"

    @property
    def duration(self) -> float | None:
        """Length in seconds (an estimate where ``frames`` is)."""
        return None if self.frames is None else self.frames / self.sample_rate


def probe(path: str | os.PathLike) -> AudioInfo:
    """Describe the audio file at ``path`` without decoding it.

    Raises:
        AudioFileError: the file is missing, empty, not audio that libsndfile or ffmpeg can
            read (saying when ffmpeg is not installed), has no frames, or more than
            `MAX_CHANNELS` channels.
    """
    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if not path.is_file():
        raise AudioFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: empty file (0 bytes)")
    try:
        info = _probe_soundfile(path)
    except sf.LibsndfileError as err:
        info = _probe_ffmpeg(path, _libsndfile_reason(err))
    if info.channels > MAX_CHANNELS:
        raise AudioFileError(
            f"{path}: {info.channels} channels; only mono and stereo are supported "
            f"(downmix it first, e.g. ffmpeg -i '{path.name}' -ac 2 stereo.wav)"
        )
    if info.frames == 0:
        raise AudioFileError(f"{path}: no audio in it (0 frames)")
    return info


def read_blocks(
    path: str | os.PathLike,
    block_frames: int = DEFAULT_BLOCK_FRAMES,
    info: AudioInfo | None = None,
) -> Iterator[np.ndarray]:
    """Yield the song at ``path`` as consecutive float32 blocks ``[C, n]``, C-contiguous.

    Every block but the last has ``block_frames`` frames; together they are the whole decoded
    song, C = ``info.channels`` (1 or 2). The file is probed here, so a bad file fails at the
    call, not at the first ``next()``; pass ``info`` from an earlier `probe` to skip that.
    Close the iterator (``contextlib.closing``) when stopping early: that closes the file, or
    kills and reaps the ffmpeg process.

    Raises:
        AudioFileError: anything `probe` refuses; a NaN or Inf sample (naming its time in
            seconds and its channel); a decoder error; fewer frames than an exact header says.
    """
    if block_frames < 1:
        raise ValueError(f"block_frames must be >= 1, got {block_frames}")
    info = probe(path) if info is None else info
    blocks = _soundfile_blocks if info.backend == "soundfile" else _ffmpeg_blocks
    return _checked(info, blocks(info, block_frames))


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a whole song into memory: (float32 ``[C, T]``, sample rate).

    The same decoding and checks as `read_blocks`; for short files only (an hour of stereo at
    44.1 kHz is 635 MB).
    """
    info = probe(path)
    blocks = list(read_blocks(path, info=info))
    return np.concatenate(blocks, axis=1), info.sample_rate


def _checked(info: AudioInfo, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Pass ``blocks`` on after checking each for NaN/Inf, and the total against the header."""
    done = 0
    try:
        for block in blocks:
            # The sum is one cheap pass; only a non-finite sum (NaN, Inf, or finite samples
            # large enough to overflow it) needs the exact, allocating test.
            if not np.isfinite(block.sum(dtype=np.float64)):
                _check_finite(info, block, done)
            done += block.shape[1]
            yield block
    finally:
        blocks.close()
    if done == 0:
        raise AudioFileError(f"{info.path}: no audio in it (0 frames decoded)")
    if info.frames_exact and done != info.frames:
        raise AudioFileError(
            f"{info.path}: decoded {done} frames but its header says {info.frames} "
            "(truncated or corrupt file)"
        )


def _check_finite(info: AudioInfo, block: np.ndarray, offset: int) -> None:
    problem = nonfinite_problem(block, offset, info.sample_rate)
    if problem:
        raise AudioFileError(f"{info.path}: {problem}; the file is corrupt or not audio")


def nonfinite_problem(block: np.ndarray, first_frame: int, sample_rate: int) -> str | None:
    """Where the first NaN or Inf sample of ``block`` ``[C, n]`` is, or None if there is none.

    ``first_frame`` is the file frame of the block's first column. Gives e.g.
    "NaN sample at 12.345 s (frame 544410, channel 2 of 2)".
    """
    bad = ~np.isfinite(block)
    if not bad.any():
        return None
    frame = int(np.flatnonzero(bad.any(axis=0))[0])
    channel = int(np.flatnonzero(bad[:, frame])[0])
    kind = "NaN" if np.isnan(block[channel, frame]) else "Inf"
    where = first_frame + frame
    return (
        f"{kind} sample at {where / sample_rate:.3f} s (frame {where}, "
        f"channel {channel + 1} of {block.shape[0]})"
    )


# --- libsndfile -------------------------------------------------------------------------------


def _probe_soundfile(path: Path) -> AudioInfo:
    with sf.SoundFile(str(path)) as f:
        frames, exact = f.frames, True
        if f.format == "MP3":
            exact = _mp3_has_length_header(path)
        return AudioInfo(
            path, f.samplerate, f.channels, frames, exact, f.format, f.subtype, "soundfile"
        )


def _soundfile_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    """Read with libsndfile in calls it decodes right, and cut them into ``block_frames``.

    libsndfile 1.2.2 gives wrong samples, for some sizes of read calls, where one read of the
    whole file is right (and equal to ffmpeg's decoding); measured on generated files:

    - MP3 at the MPEG-2 rates (22.05/24 kHz...): reads that are not a multiple of 1152 frames
      go wrong after the first one (17 of 56 files x sizes; up to 0.25 off, mpg123 prints
      bit-reservoir errors). Reads of whole multiples of 1152 were right in all 168 cases.
    - Opus: the last ~470 frames come out wrong for some read sizes (27 of 2090 tried), never
      when one read spans the last second.
    """
    reads = block_frames
    if info.format == "MP3":
        reads = -(-block_frames // _MP3_READ_QUANTUM) * _MP3_READ_QUANTUM
    tail = info.sample_rate if info.codec == "OPUS" and info.frames_exact else 0
    left = info.frames
    pending: list[np.ndarray] = []  # decoded [n, C] arrays not yet yielded
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                size = left if tail and 0 < left <= reads + tail else reads
                data = f.read(size, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                left -= data.shape[0]
                pending.append(data)
                while sum(len(p) for p in pending) >= block_frames:
                    block, pending = _take(pending, block_frames)
                    yield block
    except sf.LibsndfileError as err:
        raise AudioFileError(f"{info.path}: cannot decode it ({_libsndfile_reason(err)})") from err
    if pending:
        yield _take(pending, sum(len(p) for p in pending))[0]


def _take(pending: list[np.ndarray], frames: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first ``frames`` frames of ``pending`` as C-contiguous ``[C, frames]``; the rest."""
    joined = pending[0] if len(pending) == 1 else np.concatenate(pending)
    rest = [joined[frames:]] if len(joined) > frames else []
    return np.ascontiguousarray(joined[:frames].T), rest


def _libsndfile_reason(err: sf.LibsndfileError) -> str:
    reason = err.error_string
    # mpg123 reports a file it cannot parse as if it were missing; the file is there.
    if "does not exist or is not a regular file" in reason:
        return "not a format it knows, or corrupt"
    return reason.rstrip(".")


def _mp3_has_length_header(path: Path) -> bool:
    """Whether the first MPEG frame carries a Xing/Info header (frame count, LAME gapless info).

    With it libsndfile (mpg123) knows the exact decoded length up front; without it the length
    is estimated from the file size and bit rate.
    """
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        start = 0
        if head[:3] == b"ID3" and len(head) >= 10:  # skip an ID3v2 tag
            size = 0
            for byte in head[6:10]:
                size = (size << 7) | (byte & 0x7F)
            start = 10 + size + (10 if head[5] & 0x10 else 0)
            if start + 64 > len(head):
                f.seek(start)
                head, start = f.read(1 << 16), 0
    for i in range(start, len(head) - 64):
        if head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0:  # frame sync
            mpeg1 = (head[i + 1] >> 3) & 0x3 == 0x3
            mono = (head[i + 3] >> 6) == 0x3
            side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
            tag = head[i + 4 + side_info : i + 8 + side_info]
            return tag in (b"Xing", b"Info")
    return False


# --- ffmpeg -----------------------------------------------------------------------------------


def _probe_ffmpeg(path: Path, libsndfile_reason: str) -> AudioInfo:
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None or shutil.which("ffmpeg") is None:
        raise AudioFileError(
            f"{path}: libsndfile cannot read it ({libsndfile_reason}), and ffmpeg, which reads "
            "many more formats (m4a, aac, wma, ...), is not installed"
        )
    command = [
        ffprobe, "-v", "error", "-select_streams", "a:0",
        "-show_entries",
        "stream=codec_name,sample_rate,channels,duration:format=format_name,duration",
        "-of", "json", str(path),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        raise AudioFileError(f"{path}: ffprobe did not answer in {_PROBE_TIMEOUT_S} s") from err
    meta = json.loads(result.stdout or "{}") if result.returncode == 0 else {}
    stream, container = (meta.get("streams") or [{}])[0], meta.get("format", {})
    rate, channels = int(stream.get("sample_rate", 0)), int(stream.get("channels", 0))
    # ffprobe decodes a few packets; an error there (text that happens to parse as AMR, say)
    # means the file is not audio, said now rather than after decoding noise for minutes.
    if rate <= 0 or channels <= 0 or _first_line(result.stderr):
        ffmpeg_reason = _first_line(result.stderr) or (
            "no audio stream" if not stream else "no sample rate or channel count"
        )
        raise AudioFileError(
            f"{path}: not audio that libsndfile ({libsndfile_reason}) or ffmpeg "
            f"({ffmpeg_reason}) can read"
        )
    # ffprobe's durations are estimates: raw AAC and WMA are off by hundreds of frames, and
    # even MP4's sample-exact duration_ts is 25-30 frames short of the encoded length in files
    # ffmpeg 5.1 made, while its decoder keeps the AAC end padding (2.5 s decode to 110592
    # frames for 110250). So nothing is cut: the decoded length is the song's length.
    duration = stream.get("duration") or container.get("duration")
    frames = None if duration is None else max(1, round(float(duration) * rate))
    return AudioInfo(
        path, rate, channels, frames, False,
        container.get("format_name", "?"), stream.get("codec_name", "?"), "ffmpeg",
    )  # fmt: skip


def _ffmpeg_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    """Decode with ``ffmpeg`` to float32 on a pipe, ``block_frames`` at a time.

    The channel count and rate are pinned to what ffprobe said, so a stream that changes
    layout midway (HE-AAC parametric stereo) still arrives as ``[C, n]`` at ``sample_rate``.
    ``-xerror`` stops at the first decoding error, which then fails the read (a corrupt file).
    stderr goes to a temporary file, not a pipe, so a decoder that complains a lot cannot fill
    a pipe and stall.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioFileError(f"{info.path}: ffmpeg is needed to decode it and is not installed")
    command = [
        ffmpeg, "-nostdin", "-v", "error", "-xerror", "-i", str(info.path), "-map", "0:a:0",
        "-f", "f32le", "-acodec", "pcm_f32le",
        "-ac", str(info.channels), "-ar", str(info.sample_rate), "-",
    ]  # fmt: skip
    frame_bytes = 4 * info.channels
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        try:
            while True:
                data = process.stdout.read(block_frames * frame_bytes)
                if not data:
                    break
                if len(data) % frame_bytes:
                    raise AudioFileError(f"{info.path}: ffmpeg's output ends in a partial frame")
                block = np.frombuffer(data, dtype="<f4").reshape(-1, info.channels)
                yield np.ascontiguousarray(block.T, dtype=np.float32)
            returncode = process.wait()
            errors.seek(0)
            message = _first_line(errors.read().decode("utf-8", "replace"))
            if returncode != 0 or message:
                message = message or f"exit status {returncode}"
                raise AudioFileError(f"{info.path}: ffmpeg cannot decode it ({message})")
        finally:
            if process.poll() is None:  # closed early or failed: stop the decoder
                process.kill()
            process.wait()
            process.stdout.close()


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""

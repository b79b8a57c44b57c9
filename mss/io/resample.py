"""Sample-rate conversion with soxr, in one piece or block by block, with an exact length rule.

A song at 48 kHz goes to a 44.1 kHz model and its stems come back at 48 kHz with exactly the
song's length. soxr's streaming resampler gives, block by block, the samples of one
`soxr.resample` call on the whole signal (bit for bit in our tests, whatever the block sizes),
so memory stays flat in the song's length. The total output length is fixed:
`resampled_length(n, in_rate, out_rate)` = ``n * out_rate / in_rate`` rounded half up, or any
``out_frames`` the caller asks for (the song's own length on the way back: the natural length
there and back can miss it, 48003 frames at 48 -> 8 -> 48 kHz give 48006), reached by trimming
or zero-padding the end. soxr's own length is the same product in floating point; it agrees but
on exact ties (n * out_rate / in_rate = k + 1/2), which it rounds either way.

Quality "VHQ" (soxr's 28-bit precision): a 1 kHz sine taken 44.1 -> 48 -> 44.1 kHz comes back
within 3e-8 away from the signal's ends; "HQ" (20-bit) within 8e-7. VHQ costs about 10% more
(30 s of stereo at 44.1 -> 48 kHz: 0.09 s against 0.08 s on one CPU core). float32 samples in
and out; the filter itself is computed in double precision either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import soxr

__all__ = ["StreamResampler", "resample", "resample_blocks", "resampled_length"]

DEFAULT_QUALITY = "VHQ"


def resampled_length(frames: int, in_rate: int, out_rate: int) -> int:
    """``frames * out_rate / in_rate`` rounded half up, in exact integer arithmetic."""
    return (2 * frames * out_rate + in_rate) // (2 * in_rate)


class StreamResampler:
    """Resample blocks ``[C, n]`` of one signal from ``in_rate`` to ``out_rate``.

    Feed the blocks in order to `process` (each call returns the output that is ready, maybe
    none), then call `flush` once. The concatenated outputs equal `resample` of the whole
    signal. Output length after `flush`: ``out_frames`` when given (here or to `flush`),
    otherwise `resampled_length` of the frames fed. A few frames are held back until `flush`
    so that the end can still be trimmed. Equal rates pass blocks through unchanged.
    """

    # Enough to trim down to any out_frames within a few frames of the natural length (the
    # round trip to a model rate and back lands within ceil(in_rate / (2 * out_rate)) + 1).
    _HOLD = 64

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        channels: int,
        out_frames: int | None = None,
        quality: str = DEFAULT_QUALITY,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.in_rate, self.out_rate, self.channels = int(in_rate), int(out_rate), int(channels)
        self.out_frames = out_frames
        self.frames_in = 0
        self.frames_out = 0
        self._stream = (
            None
            if self.in_rate == self.out_rate
            else soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, "float32", quality)
        )
        self._held = np.zeros((self.channels, 0), np.float32)
        self._flushed = False

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next ``block`` ``[C, n]``; returns float32 ``[C, m]``, m >= 0."""
        if self._flushed:
            raise RuntimeError("StreamResampler.process after flush")
        block = self._check(block)
        self.frames_in += block.shape[1]
        if self._stream is None:
            out = block
        else:
            out = self._stream.resample_chunk(np.ascontiguousarray(block.T)).T
            out = np.concatenate([self._held, out], axis=1)
            keep = max(0, out.shape[1] - self._HOLD)
            out, self._held = out[:, :keep], out[:, keep:]
        return self._emit(out)

    def flush(self, out_frames: int | None = None) -> np.ndarray:
        """The rest of the output, to the exact total length; the stream ends here.

        ``out_frames`` (or the one given to the constructor) sets the total; the default is
        `resampled_length` of everything fed.
        """
        if self._flushed:
            raise RuntimeError("StreamResampler.flush called twice")
        self._flushed = True
        total = out_frames if out_frames is not None else self.out_frames
        if total is None:
            total = resampled_length(self.frames_in, self.in_rate, self.out_rate)
        if total < self.frames_out:
            raise ValueError(
                f"cannot end the stream at {total} frames: {self.frames_out} are already out "
                f"(natural length {resampled_length(self.frames_in, self.in_rate, self.out_rate)})"
            )
        tail = self._held
        if self._stream is not None:
            last = self._stream.resample_chunk(np.zeros((0, self.channels), np.float32), last=True)
            tail = np.concatenate([tail, last.T], axis=1)
        missing = total - self.frames_out - tail.shape[1]
        if missing > 0:
            tail = np.concatenate([tail, np.zeros((self.channels, missing), np.float32)], axis=1)
        self.out_frames = total
        return self._emit(tail[:, : total - self.frames_out])

    def _check(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(
                f"Expected a block with dimensions ({self.channels} channels, frames). "
                f"Found: {block.shape}"
            )
        return block

    def _emit(self, out: np.ndarray) -> np.ndarray:
        if self.out_frames is not None:  # a known total: never emit past it
            out = out[:, : max(0, self.out_frames - self.frames_out)]
        self.frames_out += out.shape[1]
        return np.ascontiguousarray(out)


def resample(
    audio: np.ndarray,
    in_rate: int,
    out_rate: int,
    out_frames: int | None = None,
    quality: str = DEFAULT_QUALITY,
) -> np.ndarray:
    """Resample a whole signal ``[C, T]``; float32 ``[C, T']`` with the length rule above."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2:
        raise ValueError(
            f"Expected a 2D array with dimensions (channel, frames). Found: {audio.shape}"
        )
    stream = StreamResampler(in_rate, out_rate, audio.shape[0], out_frames, quality)
    return np.concatenate([stream.process(audio), stream.flush()], axis=1)


def resample_blocks(
    blocks: Iterable[np.ndarray],
    in_rate: int,
    out_rate: int,
    channels: int,
    out_frames: int | None = None,
    quality: str = DEFAULT_QUALITY,
) -> Iterator[np.ndarray]:
    """Resample a stream of blocks ``[C, n]``; yields the non-empty output blocks in order."""
    stream = StreamResampler(in_rate, out_rate, channels, out_frames, quality)
    for block in blocks:
        out = stream.process(block)
        if out.shape[1]:
            yield out
    out = stream.flush()
    if out.shape[1]:
        yield out

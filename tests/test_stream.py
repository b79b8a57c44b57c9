"""Streaming separation (mss.apply.separate_stream): blocks in, the in-memory result out.

The stream must give `separate`'s stems whatever the block sizes, hand them out while the input
is still coming, and hold a bounded amount of audio however long the track is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from mss.apply import _OverlapAdd, separate, separate_stream
from tests.test_apply import RATE, ConvSeparator, PointwiseSeparator


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def blocks_of(mix: Tensor, sizes: list[int]) -> Iterator[Tensor]:
    """`mix[C, T]` cut into consecutive blocks of `sizes`, cycled until the track ends."""
    start, index = 0, 0
    while start < mix.shape[-1]:
        size = sizes[index % len(sizes)]
        yield mix[:, start : start + size]
        start, index = start + size, index + 1


def streamed(model, mix: Tensor, sizes: list[int], **kwargs) -> Tensor:
    pieces = list(separate_stream(model, blocks_of(mix, sizes), **kwargs))
    for piece in pieces:
        assert piece.dim() == 3 and piece.shape[1:2] == mix.shape[:1] and piece.shape[-1] >= 1
    return torch.cat(pieces, dim=-1)


def tiny_simple_demucs(channels: int):
    simple_demucs = pytest.importorskip("mss.models.simple_demucs")
    return simple_demucs.SimpleDemucs(
        sources=["a", "b"], sample_rate=RATE, audio_channels=channels, channels=4, lstm_layers=1
    ).eval()


# Segments of 0.3 s are 30 samples (ramp 8 at overlap 0.25); block sizes below, at and above a
# segment, and irregular ones with empty blocks.
@pytest.mark.parametrize(
    "length, segment, overlap, batch_size, sizes",
    [
        (1001, 0.3, 0.25, 1, [7]),
        (1001, 0.3, 0.25, 1, [30]),
        (1001, 0.3, 0.25, 1, [97]),
        (999, 0.3, 0.0, 3, [1, 0, 13, 64, 5]),
        (999, 0.3, 0.25, 4, [1000]),  # one block holding the whole track
        (257, 0.1, 0.9, 2, [3, 11]),  # ramp 9 > hop 1
        (31, 0.3, 0.25, 1, [4]),  # one sample past a segment
        (30, 0.3, 0.25, 1, [4]),  # exactly a segment: one call
        (13, 1.0, 0.25, 1, [4]),  # shorter than a segment
        (1, 0.3, 0.25, 1, [1]),
        (501, None, 0.25, 2, [64]),  # no segments: the whole track in one call
    ],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_stream_equals_separate_conv(length, segment, overlap, batch_size, sizes, channels):
    model = ConvSeparator(channels=channels).eval()
    mix = torch.randn(channels, length)
    args = dict(segment=segment, overlap=overlap, sample_rate=RATE, batch_size=batch_size)
    expected = separate(model, mix, **args)
    torch.testing.assert_close(streamed(model, mix, sizes, **args), expected)


@pytest.mark.parametrize(
    "length, overlap, batch_size, sizes",
    [(1001, 0.25, 1, [7, 100]), (777, 0.0, 2, [30]), (2003, 0.25, 3, [450]), (29, 0.25, 1, [8])],
)
@pytest.mark.parametrize("channels", [1, 2])
def test_stream_equals_separate_simple_demucs(length, overlap, batch_size, sizes, channels):
    model = tiny_simple_demucs(channels)
    mix = torch.randn(channels, length)
    args = dict(segment=0.3, overlap=overlap, sample_rate=RATE, batch_size=batch_size)
    expected = separate(model, mix, **args)
    torch.testing.assert_close(streamed(model, mix, sizes, **args), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_copies_blocks_so_readers_may_reuse_their_buffer(dtype):
    """A reader that fills one numpy buffer again and again (soundfile's `blocks(out=...)`)."""
    model = ConvSeparator().eval()
    mix = torch.randn(2, 640)

    def reader() -> Iterator[np.ndarray]:
        buffer = np.empty((2, 64), dtype=dtype)
        for start in range(0, 640, 64):
            buffer[:] = mix[:, start : start + 64].numpy()
            yield buffer

    out = torch.cat(list(separate_stream(model, reader(), 0.3, 0.25, RATE, batch_size=3)), -1)
    torch.testing.assert_close(out, separate(model, mix, 0.3, 0.25, RATE, batch_size=3))
    assert not out.is_inference()


def most_lag(model, mix: Tensor, block: int, batch_size: int) -> int:
    """Stream `mix` in blocks of `block`; the most input samples taken and not yet given back
    as stems at any time. Checks the stems against `separate` on the way."""
    taken = given = most = 0

    def counting_blocks() -> Iterator[Tensor]:
        nonlocal taken, most
        for piece in blocks_of(mix, [block]):
            most = max(most, taken - given)
            taken += piece.shape[-1]
            yield piece

    out = []
    for piece in separate_stream(model, counting_blocks(), 0.3, 0.25, RATE, batch_size):
        given += piece.shape[-1]
        out.append(piece)
    expected = separate(model, mix, 0.3, 0.25, RATE, batch_size=batch_size)
    torch.testing.assert_close(torch.cat(out, -1), expected)
    return most


@pytest.mark.parametrize("batch_size", [1, 4])
def test_stream_yields_while_the_input_is_still_coming(batch_size):
    """Input taken but not handed back is bounded by the batch of segments, not the track."""
    model = ConvSeparator().eval()
    seg, block = 30, 7  # 0.3 s at RATE
    for length in (3000, 12000):
        lag = most_lag(model, torch.randn(2, length), block, batch_size)
        # A batch of segments, the segment that overlaps the next batch, and one block.
        assert lag <= (batch_size + 1) * seg + block, (length, lag)


def test_engine_buffers_do_not_grow_with_track_length():
    """The overlap-add engine's input and output buffers stay the same size for a 10x longer
    track (a pointwise model, 30-sample segments, 50-sample blocks)."""

    def most_held(length: int, batch_size: int) -> int:
        engine = _OverlapAdd(PointwiseSeparator(), 30, 0.25, batch_size, torch.device("cpu"))
        most, emitted = 0, 0
        for start in range(0, length, 50):
            for stems in engine.feed(torch.randn(1, 2, min(50, length - start))):
                emitted += stems.shape[-1]
            most = max(most, engine.held)
        emitted += sum(stems.shape[-1] for stems in engine.finish())
        assert emitted == length
        return most

    for batch_size in (1, 3):
        short, long = most_held(2_000, batch_size), most_held(20_000, batch_size)
        assert long == short
        # Input: a batch of segments plus one block; output: the same segments.
        assert long <= 2 * ((batch_size + 1) * 30 + 50)


@pytest.mark.slow
def test_streaming_ten_minutes_keeps_the_peak_memory_flat(tmp_path):
    """In a fresh process: 10 min of stereo 44.1 kHz streamed through a pointwise model raise
    the peak RSS by far less than the stems of a minute (4 stems x 2 ch x 60 s = 85 MB)."""
    script = textwrap.dedent(
        """
        import resource, torch
        from mss.apply import separate_stream
        from tests.test_apply import PointwiseSeparator

        torch.set_num_threads(1)
        model = PointwiseSeparator(sources="abcd", sample_rate=44100).eval()

        def blocks(seconds):
            g = torch.Generator().manual_seed(0)
            for _ in range(seconds):
                yield torch.randn(2, 44100, generator=g)

        def run(seconds):
            samples = 0
            for stems in separate_stream(model, blocks(seconds), 10.0, 0.25, 44100):
                samples += stems.shape[-1]
            assert samples == seconds * 44100
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        warm = run(60)
        print(warm, run(600))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600
    )
    one_minute, ten_minutes = map(float, done.stdout.split())
    assert ten_minutes - one_minute < 30, (one_minute, ten_minutes)


@pytest.mark.parametrize("segment, sizes", [(0.3, [7]), (0.3, [200]), (None, [64]), (20.0, [9])])
def test_stream_with_shifts_equals_separate(segment, sizes):
    model = tiny_simple_demucs(2)
    mix = torch.randn(2, 1501)
    args = dict(segment=segment, overlap=0.25, sample_rate=RATE, batch_size=2, shifts=3, seed=11)
    expected = separate(model, mix, **args)
    torch.testing.assert_close(streamed(model, mix, sizes, **args), expected)


def test_whole_track_separators_are_refused():
    dsp = pytest.importorskip("mss.models.dsp.hpss_repet")
    model = dsp.HPSSRepet(sources=["drums", "bass", "other", "vocals"], sample_rate=44100)
    blocks = iter([torch.zeros(2, 44100)])
    with pytest.raises(ValueError, match="needs the whole track"):
        separate_stream(model, blocks, segment=None, overlap=0.25, sample_rate=44100)


@pytest.mark.parametrize(
    "kwargs", [{"overlap": 1.0}, {"segment": 0.0}, {"batch_size": 0}, {"shifts": -1}]
)
def test_bad_arguments_fail_before_any_block_is_read(kwargs):
    def blocks():
        raise AssertionError("read a block")
        yield

    args = {"segment": 1.0, "overlap": 0.25, "sample_rate": RATE} | kwargs
    with pytest.raises(ValueError):
        separate_stream(PointwiseSeparator(), blocks(), **args)


@pytest.mark.parametrize(
    "blocks, match",
    [
        ([torch.randn(100)], "Expected 2D"),
        ([torch.randn(2, 50), torch.randn(1, 50)], "same batch and channels"),
        ([], "no samples"),
        ([torch.zeros(2, 0)], "no samples"),
    ],
)
@pytest.mark.parametrize("shifts", [0, 2])
def test_bad_blocks(blocks, match, shifts):
    stream = separate_stream(PointwiseSeparator(), blocks, 0.3, 0.25, RATE, shifts=shifts)
    with pytest.raises(ValueError, match=match):
        list(stream)

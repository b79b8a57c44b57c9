"""mss.io.resample: block-wise equals one-shot soxr, and lengths come out exactly as asked."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import soxr

from mss.io.resample import StreamResampler, resample, resample_blocks, resampled_length

RATE_PAIRS = [(44100, 48000), (48000, 44100), (22050, 44100), (44100, 22050), (8000, 44100)]


def noise(channels: int, frames: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((channels, frames))).astype(
        np.float32
    )


def random_blocks(audio: np.ndarray, seed: int) -> list[np.ndarray]:
    """``audio`` cut at random places, empty blocks included."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, audio.shape[1] + 1, size=12))
    return np.split(audio, cuts, axis=1)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
@pytest.mark.parametrize("frames", [1, 7, 1001, 44101])
def test_blocks_equal_one_shot_soxr(in_rate, out_rate, frames, channels):
    """Measured: bit-identical to one `soxr.resample` call on the whole signal for every pair,
    length and cut tried; asserted to float32 rounding (1e-6) in case soxr's internals move."""
    audio = noise(channels, frames, seed=frames)
    reference = soxr.resample(audio.T, in_rate, out_rate, quality="VHQ").T
    stream = StreamResampler(in_rate, out_rate, channels)
    parts = [stream.process(block) for block in random_blocks(audio, seed=frames)]
    parts.append(stream.flush())
    out = np.concatenate(parts, axis=1)
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert out.shape[1] == resampled_length(frames, in_rate, out_rate)
    assert stream.frames_in == frames and stream.frames_out == out.shape[1]
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resample(audio, in_rate, out_rate), reference, rtol=0, atol=1e-6)


def test_length_rule_is_exact_round_half_up():
    """``n * out / in`` rounded half up in integers. soxr computes the same product in floating
    point, so it agrees except on exact ties, where it goes either way: 9153 frames at 44.1 ->
    22.05 kHz (4576.5) give 4577 but 2800 frames at 48 -> 44.1 kHz (2572.5) give 2572. The
    rule here does not depend on float rounding; at such a tie the stream ends with one zero
    (or drops one sample) relative to soxr."""
    rng = np.random.default_rng(0)
    pairs = RATE_PAIRS + [(96000, 11025), (48000, 22050)]
    cases = [(int(n), a, b) for n in rng.integers(1, 5000, 30) for a, b in pairs]
    cases += [(9153, 44100, 22050), (2800, 48000, 44100), (1, 44100, 8000), (0, 48000, 44100)]
    ties = 0
    for n, a, b in cases:
        exact = Fraction(n * b, a)
        assert resampled_length(n, a, b) == int(exact + Fraction(1, 2))
        if n and exact.denominator != 2:  # not a tie: soxr gives the same length
            assert soxr.resample(np.zeros(n, np.float32), a, b).shape[0] == resampled_length(
                n, a, b
            )
        ties += exact.denominator == 2
    assert ties >= 2
    assert resampled_length(9153, 44100, 22050) == 4577 != round(Fraction(9153, 2))
    assert resampled_length(2800, 48000, 44100) == 2573
    stream, audio = StreamResampler(48000, 44100, 1), noise(1, 2800)
    parts = [stream.process(audio[:, :1400]), stream.process(audio[:, 1400:]), stream.flush()]
    out = np.concatenate(parts, axis=1)
    assert out.shape == (1, 2573) and out[0, -1] == 0


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("model_rate", [48000, 22050, 8000, 44100])
@pytest.mark.parametrize("in_rate", [44100, 48000])
@pytest.mark.parametrize("frames", [1, 999, 44101, 48003])
def test_round_trip_to_model_rate_keeps_the_input_length(in_rate, model_rate, frames, channels):
    """There and back, with the input's length asked on the way back, gives that length
    exactly (the natural length alone would not: 48003 frames at 48 -> 8 -> 48 kHz give
    48006)."""
    audio = noise(channels, frames, seed=1)
    there = list(resample_blocks(random_blocks(audio, 2), in_rate, model_rate, channels))
    assert sum(b.shape[1] for b in there) == resampled_length(frames, in_rate, model_rate)
    back = StreamResampler(model_rate, in_rate, channels)
    out = [back.process(block) for block in there]
    out.append(back.flush(out_frames=frames))
    assert sum(b.shape[1] for b in out) == frames
    assert all(b.shape[0] == channels for b in out)


def test_natural_round_trip_length_can_differ_so_out_frames_matters():
    there = resampled_length(48003, 48000, 8000)
    assert resampled_length(there, 8000, 48000) != 48003


def test_round_trip_keeps_a_band_limited_signal():
    """A 1 kHz sine at 44.1 kHz through 48 / 22.05 / 8 kHz and back, away from the ends (where
    the sine's onset is not band-limited): measured max error 3e-8 (VHQ)."""
    rate, frames = 44100, 2 * 44100 + 11
    t = np.arange(frames) / rate
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None]
    for model_rate in (48000, 22050, 8000):
        there = resample(sine, rate, model_rate)
        back = resample(there, model_rate, rate, out_frames=frames)
        assert back.shape == sine.shape
        inner = slice(2000, frames - 2000)
        assert np.abs(back[:, inner] - sine[:, inner]).max() < 1e-6, model_rate
    # HQ is measurably coarser (8e-7), so the quality setting does reach soxr.
    back = resample(resample(sine, rate, 8000, quality="HQ"), 8000, rate, frames, quality="HQ")
    assert 1e-7 < np.abs(back[:, 2000:-2000] - sine[:, 2000:-2000]).max() < 5e-6


def test_out_frames_pads_or_trims_the_end():
    audio = noise(2, 10000)
    natural = resample(audio, 44100, 48000)
    longer = resample(audio, 44100, 48000, out_frames=natural.shape[1] + 5)
    shorter = resample(audio, 44100, 48000, out_frames=natural.shape[1] - 5)
    np.testing.assert_array_equal(longer[:, : natural.shape[1]], natural)
    np.testing.assert_array_equal(longer[:, natural.shape[1] :], 0)
    np.testing.assert_array_equal(shorter, natural[:, :-5])
    # Known up front, the total is never exceeded, whatever the blocks.
    stream = StreamResampler(44100, 48000, 2, out_frames=100)
    got = [stream.process(b) for b in random_blocks(audio, 3)] + [stream.flush()]
    np.testing.assert_array_equal(np.concatenate(got, axis=1), natural[:, :100])


def test_equal_rates_pass_through():
    audio = noise(2, 5000)
    blocks = random_blocks(audio, 4)
    out = np.concatenate(list(resample_blocks(blocks, 44100, 44100, 2)), axis=1)
    np.testing.assert_array_equal(out, audio)
    np.testing.assert_array_equal(resample(audio, 44100, 44100, out_frames=4000), audio[:, :4000])


def test_misuse_is_refused():
    stream = StreamResampler(44100, 48000, 2)
    with pytest.raises(ValueError, match=r"\(2 channels, frames\)"):
        stream.process(np.zeros((1, 100), np.float32))
    stream.process(noise(2, 44100))
    with pytest.raises(ValueError, match="cannot end the stream at 10 frames"):
        stream.flush(out_frames=10)
    with pytest.raises(RuntimeError, match="after flush"):
        stream.process(noise(2, 10))
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 48000, 2)

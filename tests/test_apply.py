"""Chunked overlap-add inference (mss.apply): chunking must not change the result."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mss.apply import MAX_SHIFT_SECONDS, separate, transition_window

RATE = 100  # Hz; small so that segments are a few dozen samples


class PointwiseSeparator(nn.Module):
    """Per-sample linear map from C channels to S x C stems (no context at all)."""

    def __init__(self, sources=("a", "b", "c"), channels: int = 2, sample_rate: int = RATE):
        super().__init__()
        self.sources = list(sources)
        self.sample_rate = sample_rate
        self.audio_channels = channels
        self.proj = nn.Conv1d(channels, len(sources) * channels, kernel_size=1)
        self.calls: list[int] = []

    def forward(self, mix: Tensor) -> Tensor:
        self.calls.append(mix.shape[0])
        b, c, t = mix.shape
        return self.proj(mix).view(b, len(self.sources), c, t)


class ConvSeparator(nn.Module):
    """Two 'same' convolutions: receptive field of 2 * RADIUS + 1 samples."""

    RADIUS = 6

    def __init__(self, sources=("a", "b"), channels: int = 2):
        super().__init__()
        self.sources = list(sources)
        self.sample_rate = RATE
        self.audio_channels = channels
        self.net = nn.Sequential(
            nn.Conv1d(channels, 8, kernel_size=7, padding=3),
            nn.Tanh(),
            nn.Conv1d(8, len(sources) * channels, kernel_size=7, padding=3),
        )

    def forward(self, mix: Tensor) -> Tensor:
        b, c, t = mix.shape
        return self.net(mix).view(b, len(self.sources), c, t)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "segment, overlap, length, batch_size",
    [
        (0.37, 0.25, 1001, 1),
        (0.37, 0.0, 1001, 2),
        (0.5, 0.5, 999, 3),
        (0.2, 0.75, 523, 4),
        (0.1, 0.9, 257, 1),
        (0.01, 0.0, 77, 8),  # one-sample segments
        (0.3, 0.25, 31, 1),  # exactly one segment
        (1.0, 0.25, 13, 1),  # shorter than a segment
        (0.05, 0.5, 1, 1),  # a single frame
    ],
)
def test_pointwise_chunked_equals_unchunked(segment, overlap, length, batch_size):
    model = PointwiseSeparator().eval()
    mix = torch.randn(2, 2, length)
    whole = separate(model, mix, segment=None, overlap=overlap, sample_rate=RATE)
    chunked = separate(
        model, mix, segment=segment, overlap=overlap, sample_rate=RATE, batch_size=batch_size
    )
    assert chunked.shape == (2, 3, 2, length)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        direct = model(mix)
    torch.testing.assert_close(whole, direct)


def test_batch_size_counts_segments():
    model = PointwiseSeparator().eval()
    mix = torch.randn(2, 2, 1000)
    separate(model, mix, segment=0.3, overlap=0.25, sample_rate=RATE, batch_size=3)
    assert max(model.calls) <= 3
    # 30-sample segments, hop 22, padded by 8 at both ends: ceil((1000 + 16 - 30) / 22) + 1
    assert sum(model.calls) == 2 * 46


def test_conv_model_matches_away_from_segment_borders():
    model = ConvSeparator().eval()
    length, segment, overlap = 2003, 1.0, 0.25
    mix = torch.randn(1, 2, length)
    whole = separate(model, mix, segment=None, overlap=overlap, sample_rate=RATE)
    chunked = separate(model, mix, segment=segment, overlap=overlap, sample_rate=RATE)

    # Segment borders in track coordinates (segments start `ramp` samples before the track),
    # and the track's own borders, where hidden layers are zero-padded only in one piece.
    seg = round(segment * RATE)
    ramp = round(overlap * seg)
    hop = seg - ramp
    edges = [0, length]
    for start in range(-ramp, length + ramp, hop):
        edges += [start, start + seg]
    near_border = torch.zeros(length, dtype=torch.bool)
    for edge in edges:
        lo, hi = max(0, edge - model.RADIUS), min(length, max(0, edge + model.RADIUS))
        near_border[lo:hi] = True
    assert (~near_border).sum() > length // 2
    torch.testing.assert_close(chunked[..., ~near_border], whole[..., ~near_border])
    # Near segment borders the cross-fade keeps the difference small.
    assert (chunked - whole).abs().max() < 0.5 * whole.abs().max()


@pytest.mark.parametrize("length, one_call", [(29, True), (30, True), (31, False)])
def test_track_of_at_most_one_segment_is_one_call(length, one_call):
    """A segment at least as long as the track separates it in one call, without padding."""
    model = ConvSeparator().eval()
    mix = torch.randn(1, 2, length)
    out = separate(model, mix, segment=0.3, overlap=0.25, sample_rate=RATE)  # 30 samples
    with torch.no_grad():
        direct = model(mix)
    assert torch.equal(out, direct) == one_call


def test_unbatched_input_and_plain_output():
    model = PointwiseSeparator().eval()
    mix = torch.randn(2, 345)
    out = separate(model, mix, segment=0.5, overlap=0.25, sample_rate=RATE, device="cpu")
    assert out.shape == (3, 2, 345)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert not out.is_inference()
    out += 1  # callers may edit the result in place
    numpy_out = separate(model, mix.numpy(), segment=0.5, overlap=0.25, sample_rate=RATE)
    torch.testing.assert_close(numpy_out + 1, out)


def test_sample_rate_mismatch_is_an_error():
    model = PointwiseSeparator(sample_rate=44100)
    with pytest.raises(ValueError, match="44100 Hz.*22050 Hz"):
        separate(model, torch.randn(2, 100), segment=1.0, overlap=0.25, sample_rate=22050)


@pytest.mark.parametrize("shape", [(100,), (1, 1, 2, 100), (2, 0)])
def test_bad_mixture_shape(shape):
    with pytest.raises(ValueError, match="Expected 2D .* or 3D"):
        separate(PointwiseSeparator(), torch.randn(shape), None, 0.25, RATE)


@pytest.mark.parametrize(
    "kwargs", [{"overlap": 1.0}, {"overlap": -0.1}, {"segment": 0.0}, {"shifts": -1}]
)
def test_bad_arguments(kwargs):
    args = {"segment": 1.0, "overlap": 0.25, "sample_rate": RATE} | kwargs
    with pytest.raises(ValueError):
        separate(PointwiseSeparator(), torch.randn(2, 100), **args)


def shift_offsets(shifts: int, seed: int) -> list[int]:
    """The delays `separate` draws: uniform in [0, 0.5 s) from a generator seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(int(MAX_SHIFT_SECONDS * RATE), (shifts,), generator=generator).tolist()


def test_shifts_average_delayed_runs():
    """shifts=N is the mean of N runs on the mixture delayed by the drawn offsets (zeros in
    front), each advanced back by its offset."""
    model = ConvSeparator().eval()
    mix = torch.randn(2, 2, 501)
    args = dict(segment=0.3, overlap=0.25, sample_rate=RATE)
    offsets = shift_offsets(3, seed=7)
    assert len(set(offsets)) == 3 and all(0 <= o < 50 for o in offsets)
    runs = [separate(model, torch.nn.functional.pad(mix, (o, 0)), **args)[..., o:] for o in offsets]
    expected = (runs[0] + runs[1] + runs[2]) / 3
    torch.testing.assert_close(separate(model, mix, **args, shifts=3, seed=7), expected)


def test_shifts_change_a_model_with_context():
    model = ConvSeparator().eval()
    mix = torch.randn(2, 1001)
    args = dict(segment=0.3, overlap=0.25, sample_rate=RATE)
    plain = separate(model, mix, **args)
    shifted = separate(model, mix, **args, shifts=2, seed=0)
    assert (shifted - plain).abs().max() > 1e-3
    assert (separate(model, mix, **args, shifts=2, seed=1) - shifted).abs().max() > 1e-3
    torch.testing.assert_close(separate(model, mix, **args, shifts=2, seed=0), shifted)


def test_shifts_keep_a_pointwise_model():
    model = PointwiseSeparator().eval()
    mix = torch.randn(2, 1001)
    args = dict(segment=0.3, overlap=0.25, sample_rate=RATE)
    plain = separate(model, mix, **args)
    torch.testing.assert_close(separate(model, mix, **args, shifts=4, seed=3), plain)


def test_model_breaking_the_contract_is_reported():
    class Cropping(PointwiseSeparator):
        def forward(self, mix):
            return super().forward(mix)[..., :-1]

    with pytest.raises(ValueError, match="separator contract"):
        separate(Cropping(), torch.randn(2, 100), 0.3, 0.25, RATE)


def test_transition_window_cross_fades_to_one():
    seg, ramp = 40, 10
    window = transition_window(seg, ramp)
    assert window.min() > 0 and window.max() == 1
    hop = seg - ramp
    total = torch.zeros(hop * 5 + seg)
    for k in range(6):
        total[k * hop : k * hop + seg] += window
    # Away from the first and last ramps, consecutive windows add up to exactly one.
    torch.testing.assert_close(total[ramp:-ramp], torch.ones(len(total) - 2 * ramp))
    assert transition_window(7, 0).eq(1).all()
    triangle = transition_window(9, 8)  # ramps longer than half the segment
    assert triangle.max() <= 1 and triangle.argmax() == 4


@pytest.mark.parametrize("length", [1, 255, 1001])
def test_simple_demucs_any_length_through_chunks(length):
    """The real model through chunked inference: shapes kept for odd lengths, finite output.

    No closeness check: its BiLSTM sees the whole segment and it normalises by each segment's
    statistics, so chunking changes its output by design (untrained: ~7 dB apart).
    """
    simple_demucs = pytest.importorskip("mss.models.simple_demucs")
    model = simple_demucs.SimpleDemucs(
        sources=["a", "b"], sample_rate=RATE * 10, channels=4, lstm_layers=1
    ).eval()
    mix = torch.randn(2, length)
    out = separate(model, mix, segment=0.3, overlap=0.25, sample_rate=RATE * 10, batch_size=2)
    assert out.shape == (2, 2, length) and torch.isfinite(out).all()

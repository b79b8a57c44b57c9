"""Augmentations on stems [B, S, C, T]: ranges, training-only, mixture == sum(stems)."""

import pytest
import torch

from mss.data.augment import ChannelSwap, RandomGain, SignFlip, compose


@pytest.fixture
def stems():
    torch.manual_seed(0)
    return torch.randn(8, 4, 2, 100)


def test_random_gain_per_source_in_range(stems):
    ones = torch.ones(64, 4, 2, 10)
    out = RandomGain(0.25, 1.25)(ones)
    gains = out[..., 0, 0]
    assert torch.all(out == gains[..., None, None])  # one gain per (example, source)
    assert gains.min() >= 0.25 and gains.max() <= 1.25
    assert gains.max() - gains.min() > 0.8  # spread over the range
    assert not torch.allclose(gains[:, 0], gains[:, 1])  # independent per source


def test_channel_swap_and_sign_flip(stems):
    torch.testing.assert_close(ChannelSwap(p=1.0)(stems), stems.flip(2))
    torch.testing.assert_close(ChannelSwap(p=0.0)(stems), stems)
    torch.testing.assert_close(SignFlip(p=1.0)(stems), -stems)
    torch.testing.assert_close(SignFlip(p=0.0)(stems), stems)
    swapped = ChannelSwap(p=0.5)(stems)
    flipped = SignFlip(p=0.5)(stems)
    for b in range(8):
        for s in range(4):
            assert torch.equal(swapped[b, s], stems[b, s]) or torch.equal(
                swapped[b, s], stems[b, s].flip(0)
            )
            assert torch.equal(flipped[b, s], stems[b, s]) or torch.equal(
                flipped[b, s], -stems[b, s]
            )
    mono = stems[:, :, :1]
    assert torch.equal(ChannelSwap(p=1.0)(mono), mono)


def test_eval_mode_is_identity(stems):
    augment = compose([RandomGain(), ChannelSwap(), SignFlip()]).eval()
    assert torch.equal(augment(stems), stems)
    assert torch.equal(compose(None)(stems), stems)


def test_mixture_is_sum_of_augmented_stems(stems):
    augment = compose([RandomGain(), ChannelSwap(), SignFlip()])
    out = augment(stems)
    assert out.shape == stems.shape and out.dtype == stems.dtype
    assert not torch.allclose(out.sum(1), stems.sum(1))  # the mixture changes with them


def test_bad_input():
    with pytest.raises(ValueError, match="batch, sources, channels, frames"):
        RandomGain()(torch.zeros(4, 2, 10))
    with pytest.raises(ValueError):
        RandomGain(1.5, 1.0)
    with pytest.raises(ValueError):
        SignFlip(p=2)

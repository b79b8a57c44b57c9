"""The post-filter benchmark's resynthesis: each filter is what its name says."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_postfilter import FILTERS, energy_weighted_sum, resynthesise  # noqa: E402

from mss.models._wiener import wiener  # noqa: E402


def _spectrograms(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    stems = torch.randn(4, 2, 33, 20, dtype=torch.complex64, generator=gen)
    return stems, stems.sum(0)


@pytest.mark.parametrize("how", FILTERS)
def test_every_filter_but_phase_makes_the_stems_sum_to_the_mixture(how):
    stems, mix = _spectrograms()
    out = resynthesise(stems.abs(), mix, how)
    assert out.shape == stems.shape
    gap = (out.sum(0) - mix).abs().max()
    if how == "phase":
        assert gap > 1e-2  # magnitudes on the mixture's phase do not add up
    else:
        assert gap < 1e-3


def test_phase_and_em_are_the_wiener_filter():
    stems, mix = _spectrograms(1)
    mags = stems.abs()
    torch.testing.assert_close(
        resynthesise(mags, mix, "phase"), wiener(mags[None], mix[None], 0)[0]
    )
    torch.testing.assert_close(resynthesise(mags, mix, "em2"), wiener(mags[None], mix[None], 2)[0])


def test_ratio2_is_the_single_channel_wiener_gain():
    stems, mix = _spectrograms(2)
    power = stems.abs().square()
    expected = mix[None] * power / power.sum(0, keepdim=True)
    torch.testing.assert_close(resynthesise(stems.abs(), mix, "ratio2"), expected)


def test_phase_sensitive_magnitudes_add_up_to_the_mixture():
    stems, mix = _spectrograms(3)
    # Unclipped, sum_j Re(S_j conj(X)) / |X| = |X| exactly; the stems' own magnitudes add to more.
    phase_sensitive = (stems * mix.conj()).real / mix.abs()
    assert energy_weighted_sum(phase_sensitive, mix) == pytest.approx(1.0, abs=1e-4)
    assert energy_weighted_sum(stems.abs(), mix) > 1.2

"""The Wiener speed benchmark times three paths that compute the same filter."""

import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_wiener  # noqa: E402

from mss.models import _wiener  # noqa: E402


@pytest.mark.parametrize("iterations", [1, 2])
def test_the_three_paths_agree(iterations):
    """mss's two paths agree to the complex64 output's rounding; the package, which runs in
    float32, to what its precision allows (test_models pins it on better-conditioned input)."""
    mags, mix = bench_wiener.inputs(0.5)
    peak = mix.abs().max()
    outs = {name: fn(mags, mix, iterations) for name, fn in bench_wiener.PATHS.items()}
    for name, bound in (("stereo", 1e-7), ("openunmix", 2e-6)):
        assert outs[name].shape == mags.shape, name
        assert (outs[name] - outs["batched"]).abs().max() / peak < bound, name


def test_batched_takes_the_general_step_and_stereo_does_not():
    mags, mix = bench_wiener.inputs(0.05)
    with mock.patch.object(_wiener, "_em_step", wraps=_wiener._em_step) as general:
        _wiener.wiener(mags, mix, 2)
        assert general.call_count == 0
        bench_wiener.batched_wiener(mags, mix, 2)
        assert general.call_count == 2
    assert torch.is_complex(mix)

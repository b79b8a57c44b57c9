"""Speed of the multichannel Wiener filter (``mss.models._wiener``) on one song's spectrogram.

Times, on the same random magnitudes and stereo mixture STFT (``--seconds`` of 44.1 kHz audio,
n_fft 4096, hop 1024, 4 sources, one thread unless ``--threads``):
- ``stereo``: mss's filter as it runs, the EM step written out per TF point for two channels;
- ``batched``: the same filter through its general step (batched 2x2 matmuls and
  ``torch.linalg.inv``), the path every channel count other than two takes, and the stereo
  path's before it was written out;
- ``openunmix``: the package's own ``openunmix.filtering.wiener`` on the whole song (mss's
  Open-Unmix wrapper calls it on windows of 300 frames; the cost per frame is the same).

Each row is the best of ``--repeat`` calls under ``torch.inference_mode``, with the largest
difference from ``batched`` relative to the mixture's peak.

    python benchmarks/bench_wiener.py --seconds 30 --iterations 1 2
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch
from openunmix import filtering as openunmix_filtering

from mss.models import _wiener

SAMPLE_RATE = 44100
N_FFT, HOP = 4096, 1024
SOURCES = 4


def inputs(seconds: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitudes [1, S, 2, F, N] below a complex64 mixture STFT [1, 2, F, N]."""
    gen = torch.Generator().manual_seed(seed)
    frames = int(seconds * SAMPLE_RATE) // HOP + 1
    shape = (1, 2, N_FFT // 2 + 1, frames)
    mix = torch.randn(shape, dtype=torch.complex64, generator=gen)
    mags = torch.rand((1, SOURCES, *shape[1:]), generator=gen) * mix.abs()[:, None]
    return mags, mix


def openunmix_wiener(mags: torch.Tensor, mix: torch.Tensor, iterations: int) -> torch.Tensor:
    """The package's filter in mss's layout (its own is frames, bins, channels, (re, im),
    sources)."""
    targets = mags[0].permute(3, 2, 1, 0)
    mix_pairs = torch.view_as_real(mix[0]).permute(2, 1, 0, 3)
    out = openunmix_filtering.wiener(targets, mix_pairs, iterations)
    return torch.view_as_complex(out.permute(4, 2, 1, 0, 3).contiguous())[None]


def batched_wiener(mags: torch.Tensor, mix: torch.Tensor, iterations: int) -> torch.Tensor:
    with mock.patch.object(_wiener, "_em_step_stereo", _wiener._em_step):
        return _wiener.wiener(mags, mix, iterations)


PATHS = {"stereo": _wiener.wiener, "batched": batched_wiener, "openunmix": openunmix_wiener}


def best_time(fn, repeat: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    mags, mix = inputs(args.seconds)
    peak = mix.abs().max().item()
    print(
        f"{args.seconds:g} s of stereo 44.1 kHz, {mags.shape[-1]} frames x {mags.shape[-2]} bins, "
        f"{SOURCES} sources, {args.threads} thread(s), best of {args.repeat}\n"
    )
    print("| path | EM iterations | seconds | x real time | max diff / peak vs batched |")
    print("|---|---:|---:|---:|---:|")
    with torch.inference_mode():
        for iterations in args.iterations:
            reference = batched_wiener(mags, mix, iterations)
            for name, fn in PATHS.items():
                seconds, out = best_time(lambda fn=fn, n=iterations: fn(mags, mix, n), args.repeat)
                diff = (out - reference).abs().max().item() / peak
                print(
                    f"| {name} | {iterations} | {seconds:.2f} | {seconds / args.seconds:.3f} "
                    f"| {diff:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

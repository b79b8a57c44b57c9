"""Which post-filter suits a separator's magnitudes? (issue 11: why Wiener helps Open-Unmix only)

Every spectrogram model here ends with per-source magnitudes on the mixture's STFT. This script
takes those magnitudes from trained checkpoints (their own filter turned off) and, as the
ceiling, two oracles from the reference stems, and resynthesises each set five ways:

- ``phase``: the magnitudes with the mixture's phase (the models' training path);
- ``em1``, ``em2``: the multichannel Wiener filter, 1 or 2 EM iterations (``mss.models._wiener``,
  the same numbers as ``openunmix.filtering.wiener``);
- ``ratio1``, ``ratio2``: the mixture times ``m_j^p / sum_k m_k^p``, p = 1 or 2 (soft masks that
  make the stems sum to the mixture; p = 2 is the single-channel Wiener gain).

The oracles are the stems' magnitudes ``|S_j|`` and the phase-sensitive magnitudes
``max(0, Re(S_j conj(X)) / |X|)``, the best any mixture-phase estimate can do under a squared
waveform error. It also prints how the magnitudes add up, ``sum_j m_j / |X|`` weighted by the
mixture's energy: about 1 for phase-sensitive estimates, above 1 for the stems' magnitudes.
Scores are song-level SDR (uSDR, ``mss.metrics.usdr``) on the benchmark set's validation tracks
(``experiment=bench``), each song in one pass, so the test tracks stay out of it.

    python benchmarks/bench_postfilter.py --data-root ../bench_data/bench \
        --ckpt unet=logs/.../epoch_043.ckpt openunmix=logs/.../epoch_004.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from mss.checkpoint import load_checkpoint, load_separator
from mss.io.read import read_audio
from mss.metrics.usdr import usdr
from mss.models._stft import istft, stft
from mss.models._wiener import wiener

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["drums", "bass", "other", "vocals"]
FILTERS = ["phase", "em1", "em2", "ratio1", "ratio2"]
# The inference settings that turn each model's own post-filter off.
FILTER_OFF = {"wiener_iterations": 0, "niter": 0}


def bench_validation_tracks() -> list[str]:
    cfg = OmegaConf.load(REPO / "conf" / "experiment" / "bench.yaml")
    return list(cfg.data.validation_tracks)


def load_without_filter(path: str) -> torch.nn.Module:
    """The checkpoint's separator with its own Wiener post-filter (if any) turned off."""
    net_config = OmegaConf.create(load_checkpoint(path)["hyper_parameters"]["net_config"])
    overrides = {key: value for key, value in FILTER_OFF.items() if key in net_config}
    return load_separator(path, net_overrides=overrides or None)


def resynthesise(magnitudes: Tensor, mix_spec: Tensor, how: str) -> Tensor:
    """[S, C, F, N] magnitudes and the [C, F, N] mixture STFT -> [S, C, F, N] complex STFTs."""
    if how.startswith("ratio"):
        powered = magnitudes ** int(how[-1])
        return mix_spec[None] * powered / powered.sum(0, keepdim=True).clamp_min(1e-12)
    iterations = int(how[-1]) if how.startswith("em") else 0
    return wiener(magnitudes[None], mix_spec[None], iterations)[0]


def energy_weighted_sum(magnitudes: Tensor, mix_spec: Tensor) -> float:
    energy = mix_spec.abs().square()
    ratio = magnitudes.sum(0) / mix_spec.abs().clamp_min(1e-12)
    return float((ratio * energy).sum() / energy.sum())


def read_track(folder: Path) -> tuple[Tensor, Tensor]:
    """[C, T] mixture and [S, C, T] stems, in ``SOURCES`` order."""

    def read(name: str) -> Tensor:
        return torch.from_numpy(read_audio(folder / f"{name}.wav")[0])

    return read("mixture"), torch.stack([read(source) for source in SOURCES])


def magnitude_sets(
    mix: Tensor,
    mix_spec: Tensor,
    stems: Tensor,
    models: dict[str, torch.nn.Module],
    n_fft: int,
    hop: int,
) -> dict[str, Tensor]:
    stem_spec = stft(stems, n_fft, hop)
    sets = {
        "oracle |S_j|": stem_spec.abs(),
        "oracle phase-sensitive": (stem_spec * mix_spec.conj()).real.clamp_min(0)
        / mix_spec.abs().clamp_min(1e-12),
    }
    for name, model in models.items():
        order = [model.sources.index(source) for source in SOURCES]
        with torch.no_grad():
            estimates = model(mix[None])[0, order]
        # With the filter off each estimate is its magnitudes on the mixture's phase; one more
        # STFT reads them back (exact up to the iSTFT's overlap-add consistency).
        sets[name] = stft(estimates, n_fft, hop).abs()
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "bench_data" / "bench")
    parser.add_argument("--ckpt", nargs="*", default=[], help="name=path of a checkpoint")
    parser.add_argument("--tracks", nargs="*", default=None, help="train/ folders to score")
    parser.add_argument("--n-fft", type=int, default=4096)
    parser.add_argument("--hop", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)

    models = {}
    for item in args.ckpt:
        name, _, path = item.partition("=")
        models[name] = load_without_filter(path)
    tracks = args.tracks if args.tracks is not None else bench_validation_tracks()

    scores: dict[tuple[str, str], list[np.ndarray]] = {}
    sums: dict[str, list[float]] = {}
    for track in tracks:
        mix, stems = read_track(args.data_root / "train" / track)
        mix_spec = stft(mix, args.n_fft, args.hop)
        for name, magnitudes in magnitude_sets(
            mix, mix_spec, stems, models, args.n_fft, args.hop
        ).items():
            sums.setdefault(name, []).append(energy_weighted_sum(magnitudes, mix_spec))
            for how in FILTERS:
                spec = resynthesise(magnitudes, mix_spec, how)
                estimates = istft(spec, args.n_fft, args.hop, mix.shape[-1])
                scores.setdefault((name, how), []).append(
                    usdr(stems.transpose(1, 2).numpy(), estimates.transpose(1, 2).numpy())
                )

    print(f"{len(tracks)} tracks; uSDR in dB, mean over tracks; sum = sum_j m_j / |X|\n")
    print("| magnitudes | sum | " + " | ".join(FILTERS) + " |")
    print("|---|---:|" + "---:|" * len(FILTERS))
    for name in sums:
        cells = [f"{np.mean(scores[name, how]):.2f}" for how in FILTERS]
        print(f"| {name} | {np.mean(sums[name]):.2f} | " + " | ".join(cells) + " |")
    print("\nper source (drums bass other vocals):")
    for (name, how), values in scores.items():
        per_source = " ".join(f"{v:6.2f}" for v in np.mean(values, axis=0))
        print(f"  {name:24s} {how:7s} {per_source}")


if __name__ == "__main__":
    main()

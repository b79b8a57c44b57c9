"""Speed and agreement of mss's REPET-SIM against librosa's gallery recipe.

The recipe is librosa's "Vocal separation" example, run on each channel:

    S_filter = librosa.decompose.nn_filter(S, aggregate=np.median, metric="cosine",
                                           width=int(librosa.time_to_frames(2, sr=sr)))
    S_filter = np.minimum(S, S_filter)
    mask_i = librosa.util.softmask(S_filter, 2 * (S - S_filter), power=2)
    mask_v = librosa.util.softmask(S - S_filter, 10 * S_filter, power=2)

and ours is ``mss.models.dsp.repet_sim.repet_sim_masks`` on the same magnitudes
(the STFT, common to both, is not timed). Usage, on 60 s of stereo music made by
``shared/bench/make_bench.py`` (two 30 s test mixtures are concatenated when
the files are shorter than ``--seconds``):

    python benchmarks/bench_repet_sim.py --audio /path/bench/test/*/mixture.wav --seconds 60

Without ``--audio`` it times a synthetic repeating signal, which is only good
for a smoke test. Prints wall and process CPU time of both, their ratios, and
the largest differences between the outputs. ``--rtf`` also times the two DSP
separators (``conf/model/hpss_repet.yaml``, ``hpss_nmf.yaml`` defaults) end to
end on the same audio and prints their CPU real-time factors (seconds of
processing per second of audio, wall clock; below 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from mss.models.dsp.repet_sim import nn_median_filter, repet_sim_masks


def load_audio(paths: list[Path], seconds: float, sample_rate: int) -> np.ndarray:
    """Concatenate the files' channels-first audio and cut to ``seconds``: [C, T]."""
    want = int(round(seconds * sample_rate))
    parts, have = [], 0
    for path in paths:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        if sr != sample_rate:
            raise ValueError(f"{path}: sample rate {sr}, expected {sample_rate}")
        parts.append(audio.T)
        have += audio.shape[0]
        if have >= want:
            break
    if have < want:
        raise ValueError(f"only {have / sample_rate:.1f} s of audio in {len(paths)} files")
    return np.concatenate(parts, axis=1)[:, :want]


def synthetic(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A repeating two-bar pattern plus a non-repeating melody, stereo: [2, T]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    bar = 2.0
    background = np.sin(2 * np.pi * 110 * t) * (np.mod(t, bar) < 0.25)
    background += 0.3 * rng.standard_normal(t.size) * (np.mod(t, bar / 4) < 0.05)
    melody = 0.5 * np.sin(2 * np.pi * np.cumsum(440 + 100 * np.sin(0.37 * t)) / sample_rate)
    return np.stack([background + melody, 0.8 * background + melody]).astype(np.float32)


def recipe(S: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """librosa's gallery recipe: (S_filter, background mask, foreground mask)."""
    S_filter = librosa.decompose.nn_filter(S, aggregate=np.median, metric="cosine", width=width)
    S_filter = np.minimum(S, S_filter)
    mask_i = librosa.util.softmask(S_filter, 2 * (S - S_filter), power=2)
    mask_v = librosa.util.softmask(S - S_filter, 10 * S_filter, power=2)
    return S_filter, mask_i, mask_v


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, nargs="*", default=[])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--n-fft", type=int, default=2048)
    parser.add_argument("--hop", type=int, default=512)
    parser.add_argument("--width-seconds", type=float, default=2.0)
    parser.add_argument("--skip-recipe", action="store_true", help="time ours only")
    parser.add_argument("--rtf", action="store_true", help="also time the DSP separators")
    args = parser.parse_args()

    if args.audio:
        audio = load_audio(sorted(args.audio), args.seconds, args.sample_rate)
    else:
        print("no --audio: timing a synthetic signal (smoke test only)")
        audio = synthetic(args.seconds, args.sample_rate)
    width = int(
        librosa.time_to_frames(args.width_seconds, sr=args.sample_rate, hop_length=args.hop)
    )
    spec = np.abs(librosa.stft(audio, n_fft=args.n_fft, hop_length=args.hop))  # [C, F, t]

    # Compile the numba kernel outside the timing (cached on disk after the first run).
    repet_sim_masks(spec[0][:, :64], width=8)

    ours_wall = ours_cpu = ref_wall = ref_cpu = 0.0
    diffs = {"S_filter": 0.0, "background": 0.0, "foreground": 0.0}
    frac_off = []
    for channel in spec:
        (bg, fg), wall, cpu = timed(repet_sim_masks, channel, width)
        ours_wall += wall
        ours_cpu += cpu
        if args.skip_recipe:
            continue
        (ref_filter, ref_bg, ref_fg), wall, cpu = timed(recipe, channel, width)
        ref_wall += wall
        ref_cpu += cpu
        diffs["background"] = max(diffs["background"], float(np.abs(bg - ref_bg).max()))
        diffs["foreground"] = max(diffs["foreground"], float(np.abs(fg - ref_fg).max()))
        ours_filter = np.minimum(channel, nn_median_filter(channel, width))
        rel = np.abs(ours_filter - ref_filter).max() / max(float(ref_filter.max()), 1e-12)
        diffs["S_filter"] = max(diffs["S_filter"], float(rel))
        # Rounding can swap two equally similar frames at the edge of the neighbour
        # pool; count the frames where that changed anything.
        frac_off.append(float((ours_filter != ref_filter).any(axis=0).mean()))

    result = {
        "seconds": args.seconds,
        "channels": int(spec.shape[0]),
        "frames": int(spec.shape[-1]),
        "n_fft": args.n_fft,
        "hop": args.hop,
        "width_frames": width,
        "ours_wall_s": round(ours_wall, 3),
        "ours_cpu_s": round(ours_cpu, 3),
    }
    if not args.skip_recipe:
        result |= {
            "recipe_wall_s": round(ref_wall, 3),
            "recipe_cpu_s": round(ref_cpu, 3),
            "speedup_wall": round(ref_wall / ours_wall, 2),
            "speedup_cpu": round(ref_cpu / ours_cpu, 2),
            "max_abs_diff_masks": {k: round(v, 6) for k, v in diffs.items() if k != "S_filter"},
            "max_rel_diff_S_filter": round(diffs["S_filter"], 6),
            "frames_not_bit_exact": [round(f, 6) for f in frac_off],
        }
    if args.rtf:
        result["rtf"] = separator_rtf(audio, args.sample_rate)
    print(json.dumps(result, indent=2))


def separator_rtf(audio: np.ndarray, sample_rate: int) -> dict:
    """Wall and CPU real-time factors of both DSP separators at their config defaults."""
    import torch
    import yaml
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    mix = torch.from_numpy(audio)[None]
    seconds = audio.shape[-1] / sample_rate
    factors = {}
    for name in ("hpss_repet", "hpss_nmf"):
        cfg = yaml.safe_load((conf / f"{name}.yaml").read_text())
        cfg |= {"sources": ["drums", "bass", "other", "vocals"], "sample_rate": sample_rate}
        model = instantiate(cfg)
        model(mix[..., : sample_rate // 2])  # imports and numba compilation, not timed
        _, wall, cpu = timed(model, mix)
        factors[name] = {"rtf_wall": round(wall / seconds, 4), "rtf_cpu": round(cpu / seconds, 4)}
    return factors


if __name__ == "__main__":
    main()

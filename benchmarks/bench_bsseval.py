"""BSSEval v4 speed, memory and agreement: museval against mss.metrics.bsseval on real tracks.

    python benchmarks/bench_bsseval.py --root /work/bench_data/bench60            # 60 s tracks
    python benchmarks/bench_bsseval.py --root ROOT --track NAME --seconds 30 --rounds 2

Tracks come from a MUSDB18-HQ-layout folder (e.g. rendered by ``shared/bench/make_bench.py``);
the first ``--tracks`` tracks of ``test/`` are used, ``--seconds`` from ``--offset``.
Estimates are made from the references:

- ``leak`` (default): each stem plus 0.1 x the other stems plus white noise at -40 dB of the
  stem (seeded), so that every metric is in a realistic range;
- ``mixture``: the mixture / 4 as every estimate (SiSEC's "mixture as estimate" baseline). It
  is exactly a mix of the references, so its SAR is rounding noise (see `differences`).

Each measurement runs in a fresh process (``--child``), which loads the audio, records its
resident memory, runs the evaluation once (SiSEC18 protocol: ``win = hop = 1 s``) and
reports wall and CPU seconds and its peak RSS (``VmHWM``), so the memory of one
method does not hide in another's. Per round, per track: museval (``museval.evaluate``), the
fast path with all metrics, and the fast path with SDR only. Printed: times, peak RSS, speed
ratios, and the largest absolute difference from museval per metric over finite frames, with
a check that the NaN frames are the same (frames above 100 dB in both, rounding noise in
museval too, are counted apart: see `differences`).

The thread count is torch's default unless ``--threads`` is given (it then also limits
OpenBLAS, which museval's LU uses). On a shared machine run it more than once (``--rounds``):
wall times move with the load, CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SOURCES = ["drums", "bass", "other", "vocals"]
METRICS = ("SDR", "ISR", "SIR", "SAR")


def load(
    track: Path, offset: float, seconds: float, estimates: str, seed: int
) -> tuple[np.ndarray, ...]:
    """References and estimates `[S, T, C]` float64 (what musdb hands museval in SiSEC18)."""
    import soundfile as sf

    stems = []
    for source in SOURCES:
        audio, rate = sf.read(track / f"{source}.wav", dtype="float64", always_2d=True)
        start = int(offset * rate)
        stems.append(audio[start : start + int(seconds * rate)])
    references = np.stack(stems)
    if estimates == "mixture":
        mixture = references.sum(0) / len(SOURCES)
        return references, np.broadcast_to(mixture, references.shape).copy()
    rng = np.random.default_rng(seed)
    others = references.sum(0, keepdims=True) - references
    rms = np.sqrt((references**2).mean(axis=(1, 2), keepdims=True))
    noise = 0.01 * rms * rng.standard_normal(references.shape)
    return references, references + 0.1 * others + noise


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    `VmHWM` where Linux has it: `getrusage`'s max RSS carries over, through exec, the RSS of the
    parent at fork time.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; writes scores and numbers to `args.out`."""
    references, estimates = load(
        Path(args.track), args.offset, args.seconds, args.estimates, args.seed
    )
    rate = 44100
    loaded_rss = peak_rss_mb()
    if args.child == "museval":
        import museval

        wall, cpu = time.perf_counter(), time.process_time()
        sdr, isr, sir, sar = museval.evaluate(references, estimates, win=rate, hop=rate)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        scores = {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}
    else:
        import torch

        from mss.metrics.bsseval import evaluate_track

        if args.threads:  # (museval's child never imports torch)
            torch.set_num_threads(args.threads)
        # Warm-up on one second: imports and first calls, not the metric (a stem may be silent
        # in that second, which only warns).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_track(references[:, :rate], estimates[:, :rate], SOURCES, rate, rate)
        sdr_only = args.child == "fast-sdr"
        wall, cpu = time.perf_counter(), time.process_time()
        result = evaluate_track(
            references, estimates, SOURCES, rate, rate, sdr_only=sdr_only, device=args.device
        )
        if args.device and args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        scores = {m: np.stack([result[s][m] for s in SOURCES]) for m in result[SOURCES[0]]}
    peak_rss = peak_rss_mb()
    np.savez(args.out, **scores)
    numbers = {"wall": wall, "cpu": cpu, "peak_rss_mb": peak_rss, "loaded_rss_mb": loaded_rss}
    Path(args.out).with_suffix(".json").write_text(json.dumps(numbers))


def measure(kind: str, track: Path, args: argparse.Namespace, tmp: Path) -> tuple[dict, dict]:
    out = tmp / f"{kind}.npz"
    command = [sys.executable, __file__, "--child", kind, "--track", str(track), "--out", str(out)]
    command += ["--offset", str(args.offset), "--seconds", str(args.seconds)]
    command += ["--estimates", args.estimates]
    command += ["--seed", str(args.seed), "--threads", str(args.threads or 0)]
    command += ["--device", args.device or ""]
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    subprocess.run(command, check=True, env=env)
    numbers = json.loads(out.with_suffix(".json").read_text())
    with np.load(out) as scores:
        return numbers, dict(scores)


def differences(fast: dict, reference: dict) -> dict[str, str]:
    """Largest |fast - museval| per metric over frames finite in both.

    Frames above 100 dB in both are left out and counted: there the error term is zero up to
    rounding (an estimate that is exactly a filtered mix of the references, e.g. the mixture),
    and the value is rounding noise in museval too (a 1e-15 relative change of the input moves
    museval's own SAR of the mixture by 0.4 dB).
    """
    out = {}
    for metric, want in reference.items():
        if metric not in fast:
            continue
        got = fast[metric]
        same_nan = np.array_equal(np.isnan(got), np.isnan(want))
        noise = (got > 100) & (want > 100)
        finite = np.isfinite(want) & np.isfinite(got) & ~noise
        worst = np.max(np.abs(got[finite] - want[finite])) if finite.any() else float("nan")
        text = f"{worst:.2e} dB over {finite.sum()} frames"
        text += f"; NaN frames {'same' if same_nan else 'DIFFER'} ({np.isnan(want).sum()})"
        if noise.any():
            text += f"; {noise.sum()} above 100 dB in both, left out"
        out[metric] = text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="MUSDB18-HQ-layout folder (uses test/)")
    parser.add_argument("--track", help="track folder name (default: the first --tracks)")
    parser.add_argument("--tracks", type=int, default=1)
    parser.add_argument("--offset", type=float, default=0.0, help="start, in seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="length (default 60)")
    parser.add_argument("--estimates", choices=["leak", "mixture"], default="leak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="0: the libraries' defaults")
    parser.add_argument("--device", default="", help="torch device of the fast path")
    parser.add_argument("--skip-museval", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or None
    if args.child:
        child(args)
        return
    if args.root is None:
        parser.error("--root is required")
    if args.track:
        tracks = [args.root / "test" / args.track]
    else:
        tracks = sorted(p for p in (args.root / "test").iterdir() if p.is_dir())[: args.tracks]

    # torch is not imported here: children fork from this process (see peak_rss_mb).
    print(f"# BSSEval v4, {args.seconds:g} s x 4 stereo stems at 44.1 kHz, win = hop = 1 s")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"threads: {args.threads or 'library defaults'}, estimates: {args.estimates}, "
        f"device: {args.device or 'cpu'}"
    )
    kinds = ["fast", "fast-sdr"] if args.skip_museval else ["museval", "fast", "fast-sdr"]
    for round_ in range(1, args.rounds + 1):
        for track in tracks:
            with tempfile.TemporaryDirectory() as tmp:
                results = {kind: measure(kind, track, args, Path(tmp)) for kind in kinds}
            print(f"\n## round {round_}, track {track.name!r}")
            print("| method | wall s | CPU s | peak RSS MB (inputs loaded) |")
            print("| --- | --- | --- | --- |")
            for kind, (numbers, _) in results.items():
                print(
                    f"| {kind} | {numbers['wall']:.2f} | {numbers['cpu']:.2f} | "
                    f"{numbers['peak_rss_mb']:.0f} ({numbers['loaded_rss_mb']:.0f}) |"
                )
            if "museval" not in results:
                continue
            base = results["museval"][0]
            for kind in ("fast", "fast-sdr"):
                numbers, scores = results[kind]
                print(
                    f"{kind}: {base['wall'] / numbers['wall']:.1f}x faster (wall), "
                    f"{base['cpu'] / numbers['cpu']:.1f}x (CPU); peak RSS "
                    f"{numbers['peak_rss_mb']:.0f} vs {base['peak_rss_mb']:.0f} MB"
                )
                for metric, text in differences(scores, results["museval"][1]).items():
                    print(f"    max |{kind} - museval| {metric}: {text}")


if __name__ == "__main__":
    main()

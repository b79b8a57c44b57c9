"""BSSEval v4 speed, memory and agreement: museval against mss.metrics.bsseval on real tracks.

    python benchmarks/bench_bsseval.py --root /work/bench_data/bench60            # 60 s tracks
    python benchmarks/bench_bsseval.py --root ROOT --track NAME --seconds 30 --rounds 2
    python benchmarks/bench_bsseval.py --agreement --toy data/toy --estimates hpss_repet
    python benchmarks/bench_bsseval.py --agreement --root ROOT --tracks 2 --exact

Tracks come from a MUSDB18-HQ-layout folder (e.g. rendered by ``shared/bench/make_bench.py``,
or the embedded toy set, generated into ``--toy ROOT`` as ``conf/data/toy.yaml`` makes it);
the first ``--tracks`` tracks of ``test/`` are used (``--tracks 0``: all), ``--seconds`` from
``--offset``. Estimates:

- ``leak`` (default): each stem plus 0.1 x the other stems plus white noise at -40 dB of the
  stem (seeded), so that every metric is in a realistic range;
- ``mixture``: the mixture / 4 as every estimate (SiSEC's "mixture as estimate" baseline). It
  is exactly a mix of the references, so its SAR is rounding noise (see `differences`);
- ``hpss_repet``: the HPSS + REPET-SIM baseline's separation of the mixture file, whole track
  in one call as ``eval.py model=hpss_repet`` does it (float32 audio in and out).

Speed (default): each measurement runs in a fresh process (``--child``), which loads the
audio, records its resident memory, runs the evaluation once (SiSEC18 protocol: ``win = hop =
1 s``) and reports wall and CPU seconds and its peak RSS (``VmHWM``), so the memory of one
method does not hide in another's. Per round, per track: museval (``museval.evaluate``), the
fast path with all metrics, and the fast path with SDR only. Printed: times, peak RSS, speed
ratios, and the largest absolute difference from museval per metric over finite frames, with
a check that the NaN frames are the same (frames above 100 dB in both, rounding noise in
museval too, are counted apart: see `differences`).

Agreement (``--agreement``): both backends in this process on every chosen track, then per
metric the largest |fast - museval| over all frames, how many frames differ by more than
0.01 dB, and the SiSEC18 summary (median over frames, then over tracks) of each with its
difference. ``--exact`` adds the exact BSSEval of ``tests/bsseval_reference.py`` (long-double
least squares; minutes per track) and how far each backend is from it.

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
    if estimates == "hpss_repet":
        import torch

        from mss.models.dsp.hpss_repet import HPSSRepet

        mixture, rate = sf.read(track / "mixture.wav", dtype="float32", always_2d=True)
        start = int(offset * rate)
        mixture = mixture[start : start + references.shape[1]]
        with torch.no_grad():
            separated = HPSSRepet(SOURCES, rate)(torch.from_numpy(mixture.T.copy())[None])[0]
        return references, separated.transpose(1, 2).double().numpy()
    rng = np.random.default_rng(seed)
    others = references.sum(0, keepdims=True) - references
    rms = np.sqrt((references**2).mean(axis=(1, 2), keepdims=True))
    noise = 0.01 * rms * rng.standard_normal(references.shape)
    return references, references + 0.1 * others + noise


def _fast_bss_eval_track():
    """mss's fast BSSEval of one track (under its former name too, to measure old commits)."""
    try:
        from mss.metrics.bsseval import bss_eval_track
    except ImportError:
        from mss.metrics.bsseval import bss_eval_track
    return bss_eval_track


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

        bss_eval_track = _fast_bss_eval_track()

        if args.threads:  # (museval's child never imports torch)
            torch.set_num_threads(args.threads)
        # Warm-up on one second: imports and first calls, not the metric (a stem may be silent
        # in that second, which only warns).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bss_eval_track(references[:, :rate], estimates[:, :rate], SOURCES, rate, rate)
        sdr_only = args.child == "fast-sdr"
        wall, cpu = time.perf_counter(), time.process_time()
        result = bss_eval_track(
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


def _markdown(frame, fmt: str) -> str:
    """A pandas DataFrame as a markdown table (without the optional `tabulate`)."""
    lines = ["| source | " + " | ".join(frame.columns) + " |"]
    lines.append("|---|" + "---:|" * len(frame.columns))
    for name, row in frame.iterrows():
        lines.append(f"| {name} | " + " | ".join(fmt.format(v) for v in row) + " |")
    return "\n".join(lines)


def _frame_table(scores: dict, sources: list[str], metrics) -> dict[str, np.ndarray]:
    """`{track: {source: {metric: [F]}}}` -> `{metric: [frames of every track and source]}`."""
    return {m: np.concatenate([scores[t][s][m] for t in scores for s in sources]) for m in metrics}


def _compare(name: str, got: dict, want: dict, metrics) -> None:
    """Print one markdown table: how far `got` is from `want`, frame by frame."""
    print(f"\n{name}")
    print("| metric | max abs diff (dB) | frames > 0.01 dB | frames compared | NaN frames |")
    print("|---|---:|---:|---:|---|")
    any_far = None
    for metric in metrics:
        a, b = got[metric], want[metric]
        both = np.isfinite(a) & np.isfinite(b)
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        diff = np.where(both, np.abs(a - b), np.where(a == b, 0.0, np.inf))  # same inf: equal
        diff = np.where(np.isnan(a) & np.isnan(b), 0.0, diff)
        far = diff > 0.01
        any_far = far if any_far is None else any_far | far
        worst = np.max(diff[both]) if both.any() else float("nan")
        print(
            f"| {metric} | {worst:.2g} | {far.sum()} | {both.sum()} of {a.size} | "
            f"{'same' if same_nan else 'DIFFER'} ({np.isnan(b).sum()}) |"
        )
    print(f"(source, frame) pairs with any metric > 0.01 dB apart: {any_far.sum()} of {a.size}")


def agreement(tracks: list[Path], args: argparse.Namespace) -> None:
    """Both backends (and optionally the exact BSSEval) on every track; frame and summary
    differences."""
    import time
    import warnings

    from mss.metrics import get_backend, summarize, usdr
    from mss.metrics.protocol import METRICS

    rate = 44100
    backends = {"museval": get_backend("museval"), "fast": get_backend("fast")}
    exact_scores = None
    if args.exact:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.bsseval_reference import scores as exact_scores
    scores = {kind: {} for kind in [*backends, *(["exact"] if args.exact else [])]}
    track_usdr = {}
    print("| track | frames | museval s | fast s |" + (" exact s |" if args.exact else ""))
    print("|---|---:|---:|---:|" + ("---:|" if args.exact else ""))
    for track in tracks:
        references, estimates = load(track, args.offset, args.seconds, args.estimates, args.seed)
        seconds = {}
        for kind, backend in backends.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                scores[kind][track.name] = backend(
                    references, estimates, SOURCES, rate, rate, track_name=track.name
                )
                seconds[kind] = time.perf_counter() - start
            for warning in caught:
                print(f"# {kind} warned: {warning.message}")
        if exact_scores is not None:
            start = time.perf_counter()
            table = exact_scores(references, estimates, rate, rate)
            seconds["exact"] = time.perf_counter() - start
            scores["exact"][track.name] = {
                s: {m: table[m][j] for m in METRICS} for j, s in enumerate(SOURCES)
            }
        track_usdr[track.name] = dict(zip(SOURCES, usdr(references, estimates), strict=True))
        frames = len(scores["fast"][track.name][SOURCES[0]]["SDR"])
        print(
            f"| {track.name} | {frames} | " + " | ".join(f"{seconds[k]:.1f}" for k in scores) + " |"
        )

    frames = {kind: _frame_table(values, SOURCES, METRICS) for kind, values in scores.items()}
    _compare("fast against museval", frames["fast"], frames["museval"], METRICS)
    if args.exact:
        _compare("museval against the exact BSSEval", frames["museval"], frames["exact"], METRICS)
        _compare("fast against the exact BSSEval", frames["fast"], frames["exact"], METRICS)

    summaries = {
        kind: summarize(values, track_usdr, SOURCES).sisec18 for kind, values in scores.items()
    }
    for kind, summary in summaries.items():
        print(f"\nSiSEC18 summary, {kind} (median over frames, then over tracks; dB)")
        print(_markdown(summary, "{:.4f}"))
    for kind in [k for k in summaries if k != "museval"]:
        diff = summaries[kind] - summaries["museval"]
        print(f"\nSiSEC18 summary, {kind} - museval (dB)")
        print(_markdown(diff, "{:+.2g}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="MUSDB18-HQ-layout folder (uses test/)")
    parser.add_argument("--track", help="track folder name (default: the first --tracks)")
    parser.add_argument("--toy", type=Path, help="use the toy set here (generated if needed)")
    parser.add_argument("--tracks", type=int, default=1, help="0: every test track")
    parser.add_argument("--offset", type=float, default=0.0, help="start, in seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="length (default 60)")
    parser.add_argument("--estimates", choices=["leak", "mixture", "hpss_repet"], default="leak")
    parser.add_argument("--agreement", action="store_true", help="frame and summary agreement")
    parser.add_argument("--exact", action="store_true", help="--agreement: add the exact BSSEval")
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
    if args.toy is not None:
        from mss.data.toy import ensure_toy_dataset

        args.root = ensure_toy_dataset(args.toy)  # conf/data/toy.yaml's defaults
    if args.root is None:
        parser.error("--root or --toy is required")
    if args.track:
        tracks = [args.root / "test" / args.track]
    else:
        tracks = sorted(p for p in (args.root / "test").iterdir() if p.is_dir())
        tracks = tracks[: args.tracks or None]
    if args.agreement:
        print(
            f"# fast against museval: {len(tracks)} track(s) of {args.root}, up to "
            f"{args.seconds:g} s from {args.offset:g} s, estimates: {args.estimates}"
        )
        agreement(tracks, args)
        return

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

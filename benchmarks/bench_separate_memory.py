"""Peak memory and speed of streamed separation (`mss.apply.separate_stream`) by track length.

Each model, built from its ``conf/model/<name>.yaml`` with random weights (memory and speed do
not depend on them), separates ``--minutes`` of synthetic stereo 44.1 kHz noise that is
generated block by block (``--block`` seconds each, never held whole) and streamed through
``separate_stream`` (``--segment`` s segments, ``--overlap``, batch ``--batch-size``) in eval
mode. The stems are consumed as they come (their energy is summed, as a writer would drain
them) and dropped. Every measurement runs in a fresh process on ``--threads`` threads, so its
peak RSS (``ru_maxrss``) is its own; "model RSS" is the process after building the model and
one untimed warm-up segment, before the track starts. Real-time factor = wall time / audio
time; "CPU s per audio s" is the process's CPU time per audio second, which on one thread stands
for the quiet-machine RTF when other jobs share the cores.

    python benchmarks/bench_separate_memory.py --models unet hdemucs --minutes 1 10
    python benchmarks/bench_separate_memory.py --models simple_demucs --minutes 1 10 60

Prints a markdown table (the peak RSS of each run next to that of the model's shortest run)
and, with ``--json PATH``, writes the numbers. The file-to-file path (decoding, resampling,
writing) is not part of this measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from bench_model_speed import SAMPLE_RATE, SOURCES, build

MODELS = ["simple_demucs", "unet", "hdemucs"]


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def synthetic_blocks(seconds: float, block_seconds: float) -> Iterator[torch.Tensor]:
    """Stereo noise at -20 dBFS RMS in blocks `[2, n]`, made on demand from a seeded generator."""
    generator = torch.Generator().manual_seed(0)
    total, block = int(seconds * SAMPLE_RATE), int(block_seconds * SAMPLE_RATE)
    for start in range(0, total, block):
        yield 0.1 * torch.randn(2, min(block, total - start), generator=generator)


def stream_once(
    name: str,
    minutes: float,
    segment: float,
    overlap: float,
    batch_size: int,
    block: float,
    threads: int,
) -> dict:
    """Run in a child process: the numbers for one model and one track length."""
    from mss.apply import separate_stream  # in the child, after torch's thread setting

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name).eval()
    args = dict(segment=segment, overlap=overlap, sample_rate=SAMPLE_RATE, batch_size=batch_size)
    # Warm-up: one segment, so that the model's own working memory is in "model RSS".
    for _ in separate_stream(model, synthetic_blocks(segment, block), **args):
        pass
    model_rss = _current_rss_mb()

    seconds = minutes * 60
    samples, energy = 0, torch.zeros(len(SOURCES), dtype=torch.float64)
    start, cpu_start = time.perf_counter(), time.process_time()
    for stems in separate_stream(model, synthetic_blocks(seconds, block), **args):
        samples += stems.shape[-1]
        energy += stems.double().square().sum(dim=(1, 2))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert samples == int(seconds * SAMPLE_RATE) and torch.isfinite(energy).all()
    return {
        "model": name,
        "minutes": minutes,
        "wall_s": wall,
        "rtf": wall / seconds,
        "cpu_rtf": cpu / seconds,
        "model_rss_mb": model_rss,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_child(fn, *args):
    # A fresh (spawned) process per measurement: its own peak RSS, no warm caches.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--segment", type=float, default=10.0)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--block", type=float, default=1.0, help="input block in seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    print(
        f"# torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or 'cpu'}; "
        f"stereo {SAMPLE_RATE} Hz in {args.block:g} s blocks, segment {args.segment:g} s, "
        f"overlap {args.overlap:g}, batch {args.batch_size}"
    )
    print(
        "\n| model | audio | wall (s) | RTF | CPU s per audio s | model RSS (MB) "
        "| peak RSS (MB) | peak / shortest |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for name in args.models:
        shortest = None
        for minutes in sorted(args.minutes):
            r = _in_child(
                stream_once,
                name,
                minutes,
                args.segment,
                args.overlap,
                args.batch_size,
                args.block,
                args.threads,
            )
            results.append(r)
            shortest = shortest or r["peak_rss_mb"]
            print(
                f"| {name} | {minutes:g} min | {r['wall_s']:.0f} | {r['rtf']:.3f} | "
                f"{r['cpu_rtf']:.3f} | {r['model_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['peak_rss_mb'] / shortest:.3f} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

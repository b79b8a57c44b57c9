"""Separation speed (real-time factor) of the trainable models, and simple_demucs training speed.

Separation: each model, built from its ``conf/model/<name>.yaml`` with random weights (speed
does not depend on them), separates ``--seconds`` of stereo 44.1 kHz audio through
``mss.apply.separate`` in eval mode under ``torch.inference_mode`` (segments of ``--segment``
seconds, ``--overlap`` overlap, batch 1). Each model runs in a fresh process, so the reported
peak RSS is its own. Real-time factor = wall time / audio duration (below 1 is faster than
real time). One untimed warm-up call on a 1 s segment comes first.

Training: ``--train-steps`` optimizer steps of simple_demucs (forward, the loss of each
``conf/loss/<name>.yaml`` in ``--train-losses``, backward, Adam) on random batches of
``--train-batch`` x stereo chunks of each ``--train-seconds``, after 2 untimed steps; data
loading is not included. ``--keep-freed-memory`` switches glibc's malloc as ``train.py`` does
(``keep_freed_memory=true``); without it the process keeps glibc's defaults.

    python benchmarks/bench_model_speed.py                       # everything, 60 s audio
    python benchmarks/bench_model_speed.py --models simple_demucs --skip-train

Prints a markdown table and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mss.utils.malloc import keep_freed_memory

CONF = Path(__file__).resolve().parents[1] / "conf"
SOURCES = ["drums", "bass", "other", "vocals"]
SAMPLE_RATE = 44100
MODELS = ["simple_demucs", "unet", "hdemucs_low", "hdemucs_high"]


def build(name: str, group: str = "model", segment: float | None = None) -> torch.nn.Module:
    """conf/<group>/<name>.yaml with 4 stereo sources at 44.1 kHz; `segment` sets
    `data.segment` (htdemucs's training length; other models ignore it)."""
    overrides = [
        f"+{group}={name}",
        f"+data.sources=[{','.join(SOURCES)}]",
        f"+data.sample_rate={SAMPLE_RATE}",
    ]
    if segment is not None:
        overrides.append(f"+data.segment={segment}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=overrides)
    return instantiate(cfg[group])


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def separation_speed(name: str, seconds: float, segment: float, overlap: float, threads: int):
    """Run in a child process: returns the numbers for one model."""
    from mss.apply import separate  # in the child, after torch's thread setting

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name).eval()
    params = sum(p.numel() for p in model.parameters())
    mix = 0.1 * torch.randn(
        2, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        separate(model, mix[:, :SAMPLE_RATE], segment=None, overlap=0.0, sample_rate=SAMPLE_RATE)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = separate(model, mix, segment=segment, overlap=overlap, sample_rate=SAMPLE_RATE)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert out.shape == (len(SOURCES), 2, mix.shape[-1])
    return {
        "model": name,
        "parameters": params,
        "seconds": seconds,
        "wall_s": wall,
        "rtf": wall / seconds,
        # CPU seconds of this process per audio second: with --threads 1 it stands for the
        # quiet-machine real-time factor even when other jobs share the cores
        "cpu_rtf": cpu / seconds,
        "peak_rss_mb": _peak_rss_mb(),
    }


def training_speed(
    batch: int, seconds: float, steps: int, threads: int, loss: str, keep_memory: bool = False
) -> dict:
    if keep_memory:
        keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build("simple_demucs").train()
    loss_fn = build(loss, group="loss")
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    length = int(seconds * SAMPLE_RATE)
    stems = 0.1 * torch.randn(batch, len(SOURCES), 2, length)
    mix = stems.sum(1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(mix), stems)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "model": "simple_demucs",
        "loss": loss,
        "batch": batch,
        "chunk_s": seconds,
        "steps": steps,
        "steps_per_s": steps / wall,
        "s_per_step": wall / steps,
        "cpu_s_per_step": cpu / steps,
        "audio_s_per_s": steps * batch * seconds / wall,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_child(fn, *args):
    # A fresh (spawned) process per measurement: its own peak RSS, no warm caches.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--segment", type=float, default=10.0)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-seconds", type=float, nargs="+", default=[2.0, 6.0])
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-losses", nargs="+", default=["l1", "l1_mrstft", "l1_auraloss"])
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="training: glibc keeps freed memory mapped, as train.py does (mss/utils/malloc.py)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    print(
        f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or 'cpu'}; "
        f"{args.seconds:g} s stereo {SAMPLE_RATE} Hz, segment {args.segment:g} s, "
        f"overlap {args.overlap:g}"
    )
    results = {"separation": [], "training": []}
    print("\n| model | parameters | wall (s) | RTF | CPU s / audio s | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models:
        r = _in_child(
            separation_speed, name, args.seconds, args.segment, args.overlap, args.threads
        )
        results["separation"].append(r)
        print(
            f"| {name} | {r['parameters']:,} | {r['wall_s']:.1f} | {r['rtf']:.3f} | "
            f"{r['cpu_rtf']:.3f} | {r['peak_rss_mb']:.0f} |",
            flush=True,
        )
    if not args.skip_train:
        print(
            "\n| model | loss | batch x chunk | steps/s | s/step | CPU s/step | audio s/s "
            "| RSS (MB) |"
        )
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for loss in args.train_losses:
            for seconds in args.train_seconds:
                r = _in_child(
                    training_speed,
                    args.train_batch,
                    seconds,
                    args.train_steps,
                    args.threads,
                    loss,
                    args.keep_freed_memory,
                )
                results["training"].append(r)
                print(
                    f"| simple_demucs | {loss} | {r['batch']} x {seconds:g} s | "
                    f"{r['steps_per_s']:.2f} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | "
                    f"{r['audio_s_per_s']:.1f} | {r['peak_rss_mb']:.0f} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Training throughput: samples per second of a full training step, peak memory, DDP scaling.

A training step is what `SeparationModule` does for one batch, without data loading (the
loader is about 100x faster, BENCHMARKS.md): forward, the default loss (`conf/loss/l1.yaml`),
backward, gradient clipping at norm 5 (the trainer's default) and an Adam step, on random
stereo 44.1 kHz batches of ``--batches`` x ``--seconds`` with four sources. Models are built
from ``conf/model/<name>.yaml`` with random weights (speed does not depend on them).

Axes: ``--batches``, ``--threads`` (intra-op threads of the process), ``--precisions``
(``fp32``; ``bf16``: the step's forward and loss under ``torch.autocast(dtype=bfloat16)`` as
Lightning's ``precision=bf16-mixed``; ``fp16``: autocast float16 with a GradScaler as
``16-mixed``, CUDA only) and ``--compile`` (``off``; ``on``: the forward through
``torch.compile(dynamic=False)`` as ``module.compile=true``, with a fresh inductor cache so
its compile time is a cold start). Every row runs in a fresh child process: its peak RSS
(``ru_maxrss``, or the peak CUDA memory allocated with ``--device cuda``) is its own.
``--warmup`` steps (plus the compiling step with ``compile on``) are not timed; compile time =
the first step's wall time minus a timed step's.

``--ddp``: the scaling of data-parallel training instead, one row per model: ``--ddp-batch`` per
process, one thread per process, ``DistributedDataParallel`` over gloo (nccl on CUDA) in two
fresh processes against one plain process; efficiency = samples/s of 2 processes /
(2 x samples/s of 1 process).

The machine may be shared: each row records the 1-minute load average at its end.

    python benchmarks/bench_throughput.py --models simple_demucs unet hdemucs
    python benchmarks/bench_throughput.py --batches 2 --threads 1 --precisions fp32 --compile off on
    python benchmarks/bench_throughput.py --ddp
    python benchmarks/bench_throughput.py --device cuda --batches 4 8 --precisions fp32 bf16 fp16

Prints a markdown table and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = ["drums", "bass", "other", "vocals"]
SAMPLE_RATE = 44100
MODELS = ["simple_demucs", "unet", "hdemucs"]


# --- one measurement, in a child process -----------------------------------------------------


def _build(name: str, group: str, seconds: float):
    # in the child only: the parent does not import torch
    from bench_model_speed import build

    return build(name, group, segment=seconds)


def measure(spec: dict) -> dict:
    """Time `spec["steps"]` training steps after the warm-up ones; one process (one DDP rank)."""
    import torch

    torch.set_num_threads(spec["threads"])
    rank, world = spec.get("rank", 0), spec.get("world", 1)
    device = torch.device(spec["device"] if spec["device"] == "cpu" else f"cuda:{rank}")
    if world > 1:
        torch.distributed.init_process_group(
            "gloo" if device.type == "cpu" else "nccl",
            init_method=f"tcp://127.0.0.1:{spec['port']}",
            rank=rank,
            world_size=world,
        )
    torch.manual_seed(0)
    model = _build(spec["model"], "model", spec["seconds"]).to(device).train()
    loss_fn = _build("l1", "loss", spec["seconds"]).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=None if device.type == "cpu" else [device]
        )
    forward = torch.compile(net.forward, dynamic=False) if spec["compile"] else net
    optimizer = torch.optim.Adam(parameters, lr=3e-4)
    precision = spec["precision"]
    if precision == "fp16" and device.type != "cuda":
        raise SystemExit("fp16 mixed precision is CUDA only (on CPU Lightning runs bf16-mixed)")
    autocast = torch.autocast(
        device.type,
        dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32),
        enabled=precision != "fp32",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator().manual_seed(rank)
    length = int(spec["seconds"] * SAMPLE_RATE)
    stems = (0.1 * torch.randn(spec["batch"], len(SOURCES), 2, length, generator=generator)).to(
        device
    )
    mix = stems.sum(1)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(forward(mix), stems)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        scaler.step(optimizer)
        scaler.update()
        sync()
        return time.perf_counter() - start

    first = step()
    for _ in range(spec["warmup"] - 1 + bool(spec["compile"])):
        step()
    if world > 1:
        torch.distributed.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    times = [step() for _ in range(spec["steps"])]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if world > 1:
        torch.distributed.destroy_process_group()
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    )
    return {
        **{k: v for k, v in spec.items() if k != "port"},
        "parameters": sum(p.numel() for p in parameters),
        "wall_s": wall,
        "samples_per_s": spec["steps"] * spec["batch"] / wall,
        "s_per_step": wall / spec["steps"],
        "cpu_s_per_step": cpu / spec["steps"],
        "compile_s": first - min(times) if spec["compile"] else 0.0,
        "peak_mb": peak,
        "load_1min": os.getloadavg()[0],
    }


# --- the parent: fresh processes, tables -----------------------------------------------------


def _launch(spec: dict, cache: str | None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile in every row
    return subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate()
    if process.returncode:
        # a row that cannot run (an op the compiler refuses, out of memory) says why and the
        # sweep goes on
        lines = err.strip().splitlines()
        errors = [line for line in lines if "Error" in line.split(":")[0]]
        raise ChildFailed((errors or lines or [f"status {process.returncode}"])[-1][:200])
    return json.loads(out.strip().splitlines()[-1])


class ChildFailed(RuntimeError):
    pass


def run(spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
        return _result(_launch(spec, cache if spec["compile"] else None))


def run_ddp(spec: dict, world: int) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks = [_launch({**spec, "rank": r, "world": world, "port": port}, None) for r in range(world)]
    results = [_result(p) for p in ranks]
    wall = max(r["wall_s"] for r in results)
    return {
        **results[0],
        "world": world,
        "wall_s": wall,
        "samples_per_s": world * spec["steps"] * spec["batch"] / wall,
        "peak_mb": max(r["peak_mb"] for r in results),
        "load_1min": max(r["load_1min"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16", "fp16"])  # fmt: skip
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--seconds", type=float, default=3.0, help="chunk length")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (>= 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ddp", action="store_true", help="DDP scaling, 2 processes against 1")
    parser.add_argument("--ddp-batch", type=int, default=1, help="batch per process")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")

    import torch

    print(
        f"# torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}, "
        f"device {args.device}; {args.seconds:g} s stereo {SAMPLE_RATE} Hz chunks, 4 sources, "
        f"{args.warmup} warm-up + {args.steps} timed steps; load at start "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    base = {"device": args.device, "seconds": args.seconds, "steps": args.steps,
            "warmup": args.warmup}  # fmt: skip
    rows: list[dict] = []
    started = time.perf_counter()
    if args.ddp:
        print("\n| model | batch/proc | 1 proc samples/s | 2 procs samples/s | efficiency "
              "| peak/proc (MB) | load |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name in args.models:
            spec = {**base, "model": name, "batch": args.ddp_batch, "threads": 1,
                    "precision": "fp32", "compile": False}  # fmt: skip
            one, two = run(spec), run_ddp(spec, 2)
            efficiency = two["samples_per_s"] / (2 * one["samples_per_s"])
            rows += [one, two]
            print(
                f"| {name} | {args.ddp_batch} | {one['samples_per_s']:.2f} | "
                f"{two['samples_per_s']:.2f} | {efficiency:.2f} | {two['peak_mb']:.0f} | "
                f"{one['load_1min']:.1f} / {two['load_1min']:.1f} |",
                flush=True,
            )
    else:
        print("\n| model | batch | threads | precision | compile | samples/s | s/step "
              "| CPU s/step | compile (s) | peak (MB) | load |")  # fmt: skip
        print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        grid = itertools.product(
            args.models, args.batches, args.threads, args.precisions, args.compile
        )
        for name, batch, threads, precision, compile in grid:
            spec = {**base, "model": name, "batch": batch, "threads": threads,
                    "precision": precision, "compile": compile == "on"}  # fmt: skip
            try:
                r = run(spec)
            except ChildFailed as error:
                rows.append({**spec, "error": str(error)})
                print(f"| {name} | {batch} | {threads} | {precision} | {compile} | failed: "
                      f"{error} |||||| {os.getloadavg()[0]:.1f} |", flush=True)  # fmt: skip
                continue
            rows.append(r)
            print(
                f"| {name} | {batch} | {threads} | {precision} | {compile} | "
                f"{r['samples_per_s']:.2f} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | "
                f"{r['compile_s']:.0f} | {r['peak_mb']:.0f} | {r['load_1min']:.1f} |",
                flush=True,
            )
    print(f"\n# {time.perf_counter() - started:.0f} s in all", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

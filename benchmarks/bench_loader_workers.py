"""Is data loading ever the bottleneck? The training DataLoader at 0/2/4/8 workers against the
chunks per second a GPU would train on.

    python benchmarks/bench_loader_workers.py --root ../bench_data/bench

Measured: the real training loader, ``MusdbDataModule.train_dataloader()`` with the settings of
``conf/data/musdb18hq.yaml`` (6 s chunks, batch 16, remix 0.5, silence -60 dBFS, persistent
workers), on a warm page cache. For each ``--workers`` count: the time to the first batch (the
workers starting and filling their queues) and then chunks/s over ``--batches`` batches. There is
no CUDA here, so batches are not pinned (pinning costs one extra copy in the main process).

Estimated, since there is no GPU here: the chunks/s an *ideal* GPU would consume when training
each model on 6 s chunks. Forward + L1 loss + backward of a batch is run once on the CPU under
counters of the FLOPs (``torch.utils.flop_counter``) and of the bytes every op reads and writes
(inputs + outputs, views excluded); the GPU time of a chunk is taken as ``max(FLOPs / peak
FLOP/s, bytes / memory bandwidth)``, by default an A100-class GPU's TF32 tensor-core peak (156
TFLOP/s; convolutions use TF32 by default in PyTorch) and HBM bandwidth (2.0 TB/s). Both peaks
are never sustained and the optimizer step is left out, so real training is slower: the
estimate is an upper bound on what the loader must deliver.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from mss.data.datamodule import MusdbDataModule

SOURCES = ["drums", "bass", "other", "vocals"]
SAMPLE_RATE = 44100
# ops that move no data (metadata only)
_FREE = {"aten::detach", "aten::alias", "aten::lift_fresh"}


def warm_cache(root: Path) -> int:
    """Read every WAV of ``root/train`` once; returns the bytes read."""
    return sum(len(p.read_bytes()) for p in sorted((root / "train").rglob("*.wav")))


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes, from /proc (Linux)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def loader_rate(root: Path, workers: int, batches: int, batch_size: int, segment: float):
    """(seconds to the first batch, chunks/s, CPU seconds per chunk) over ``batches`` batches.

    Timing starts once the workers have filled their queues (``2 * workers`` batches, torch's
    default prefetch), so that it sees the steady state: as many batches in the making at its
    end as at its start. The CPU time is the main process's and its workers' together.
    """
    warmup = 1 + 2 * workers
    dm = MusdbDataModule(
        root,
        sources=SOURCES,
        validation_tracks=[],
        segment=segment,
        # more than is read, so that the queues are as full at the end as at the start
        samples_per_epoch=batch_size * (warmup + batches + 2 * workers),
        remix_probability=0.5,
        silence_threshold=-60.0,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=False,
    )
    begin = time.perf_counter()
    it = iter(dm.train_dataloader())
    next(it)
    first = time.perf_counter() - begin
    for _ in range(warmup - 1):
        next(it)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]  # torch's worker list
    cpu, begin = _cpu_seconds(pids), time.perf_counter()
    n = sum(next(it).shape[0] for _ in range(batches))
    rate = n / (time.perf_counter() - begin)
    cpu = _cpu_seconds(pids) - cpu
    del it  # stops the workers
    return first, rate, cpu / n


class ByteCounter(TorchDispatchMode):
    """Bytes read and written by every op: its tensor inputs and outputs, views excluded."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.name() not in _FREE:
            tensors = tree_flatten((args, kwargs or {}, out))[0]
            self.bytes += sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))
        return out


def training_cost(name: str, batch: int, segment: float) -> tuple[float, float]:
    """(FLOPs, bytes) of forward + L1 + backward per chunk of ``segment`` s, at ``batch``."""
    from bench_model_speed import build  # the same configs as the speed benchmark

    torch.manual_seed(0)
    net = build(name).train()
    stems = 0.1 * torch.randn(batch, len(SOURCES), 2, int(segment * SAMPLE_RATE))
    with FlopCounterMode(display=False) as flops, ByteCounter() as moved:
        (net(stems.sum(1)) - stems).abs().mean().backward()
    return flops.get_total_flops() / batch, moved.bytes / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="MUSDB18-HQ-layout root")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per count")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment", type=float, default=6.0)
    parser.add_argument("--models", nargs="*", default=["simple_demucs", "unet", "hdemucs"])
    parser.add_argument("--count-batch", type=int, default=1, help="batch of the FLOP count")
    parser.add_argument("--gpu-tflops", type=float, default=156.0, help="assumed peak TFLOP/s")
    parser.add_argument("--gpu-tbps", type=float, default=2.0, help="assumed memory TB/s")
    args = parser.parse_args()

    # torch warns when there are more workers than cores: here, on purpose (said in the output)
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    size = warm_cache(args.root)
    cpus = len(os.sched_getaffinity(0))
    print(
        f"{args.root}: {size / 2**20:.0f} MiB of train WAV (warm cache), {cpus} CPU cores; "
        f"batches of {args.batch_size} x {args.segment:g} s, {len(SOURCES)} stems, stereo"
        + ("; more workers than cores oversubscribe them" if max(args.workers) > cpus else "")
    )
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("\n| workers | first batch (s) | chunks/s | CPU ms / chunk | chunks per CPU s |")
    print("|---:|---:|---:|---:|---:|")
    costs = []
    for workers in args.workers:
        first, rate, cpu = loader_rate(
            args.root, workers, args.batches, args.batch_size, args.segment
        )
        costs.append(cpu)
        print(
            f"| {workers} | {first:.1f} | {rate:.1f} | {cpu * 1e3:.0f} | {1 / cpu:.1f} |",
            flush=True,
        )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if not args.models:
        return
    # CPU time per chunk does not depend on how busy the machine is (wall time does): with a
    # free core per worker, n workers load n / cpu chunks/s until disk or memory bandwidth
    # saturates. The median over the worker counts is the cost used (without workers, torch's
    # intra-op threads also spin on collation in the main process).
    with_workers = sorted(c for w, c in zip(args.workers, costs, strict=True) if w) or costs
    cpu = with_workers[len(with_workers) // 2]
    print(
        f"\nIdeal GPU: {args.gpu_tflops:g} TFLOP/s, {args.gpu_tbps:g} TB/s; loading costs "
        f"{cpu * 1e3:.0f} CPU ms per chunk, so 8 workers on free cores load {8 / cpu:.0f} chunks/s"
    )
    print(
        "\n| model | GFLOP / chunk | GB moved / chunk | ideal GPU chunks/s | workers to feed it |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        flops, moved = training_cost(name, args.count_batch, args.segment)
        seconds = max(flops / (args.gpu_tflops * 1e12), moved / (args.gpu_tbps * 1e12))
        demand = 1 / seconds
        print(
            f"| {name} | {flops / 1e9:.0f} | {moved / 1e9:.1f} | {demand:.0f} | "
            f"{demand * cpu:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

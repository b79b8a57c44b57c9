"""Quality per compute (issue 11): the table and the plot of BENCHMARKS.md.

Every learned configuration ("preset") is trained by ``train.py experiment=bench`` for the same
budget of CPU seconds of one training thread (30 CPU-minutes unless ``--budget``), once per
seed; the best checkpoint by validation SDR is then scored on the benchmark set's test tracks
by museval (``test=true``). The DSP baselines have nothing to train or seed: ``eval.py`` scores
them once. Each run has its own folder ``<root>/<preset>/seed<S>`` (``seed0`` for the DSP
baselines); a run whose ``eval/summary.csv`` exists is skipped and one killed half-way resumes
from its last checkpoint (``ckpt_path=auto``), so an interrupted sweep continues where it
stopped.

    python benchmarks/bench_quality.py run --presets simple_demucs openunmix --seeds 1 2 3 --jobs 2
    python benchmarks/bench_quality.py run --presets hpss_repet hpss_nmf
    python benchmarks/bench_quality.py run --runs openunmix:1 simple_demucs:2   # in this order
    python benchmarks/bench_quality.py report --png BENCHMARKS_quality.png
    python benchmarks/bench_quality.py --root logs/quality_confirm archive \
        benchmarks/results/quality_confirm

``report`` prints the markdown table (SiSEC18 SDR per source, their average and uSDR, as mean
and sample standard deviation over the seeds found) and draws validation SDR against CPU-minutes
for every run, from the ``EpochSummary`` lines of each run's own ``train.log``.

``archive`` copies each finished run's record (``train.log``, ``eval/summary.csv`` and the
run's Hydra overrides, a few kB, no checkpoints) into a tracked folder of the same layout, so
that ``report --root`` on that folder redraws the table and plot of BENCHMARKS.md on any
machine.

Two runs side by side on two cores are fair: each is pinned to one thread, and the budget counts
the process's CPU time, not wall time.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("drums", "bass", "other", "vocals")

# preset -> train.py overrides (after experiment=bench)
# simple_demucs trains at batch 2 under experiment=bench since issue 11's confirmation
# (conf/experiment_model/bench_simple_demucs.yaml); the presets measured before it pin the batch
# of 4 they ran with, so that rerunning them reproduces their rows
BATCH4 = "data.batch_size=4"
# likewise Open-Unmix validates every 4th epoch under experiment=bench since
# (conf/experiment_model/bench_openunmix.yaml); the Open-Unmix presets measured before it
# validated every epoch
VAL_EVERY_EPOCH = "trainer.check_val_every_n_epoch=1"
LEARNED = {
    "simple_demucs": ["model=simple_demucs"],
    # the confirmation's base and the main table's simple_demucs rows
    "simple_demucs_batch4": ["model=simple_demucs", BATCH4],
    "simple_demucs_mrstft": ["model=simple_demucs", "loss=l1_mrstft", BATCH4],
    "simple_demucs_ema_cosine": [
        "model=simple_demucs",
        "callbacks=[default,cpu_budget,ema]",
        "module/scheduler=cosine",
        BATCH4,
    ],
    "unet": ["model=unet"],
    # unet's default until issue 11's confirmation (the seed report's 2048-wide bottleneck);
    # the main table's unet rows and the confirmation's base ran this
    "unet_bottleneck2048": ["model=unet", "model.bottleneck=2048"],
    # the screening's best unet (bench_screen, 10 CPU-minutes): a 512-wide bottleneck, 4x
    # fewer LSTM weights, so more steps in the same CPU time; unet's default since
    "unet_bottleneck512": ["model=unet", "model.bottleneck=512"],
    # the screening's best simple_demucs: batch 2, twice the updates for the same samples;
    # the confirmation's challenger, simple_demucs' bench default since
    "simple_demucs_batch2": ["model=simple_demucs", "data.batch_size=2"],
    # the screening's direction for unet's mask (bench_screen, 10 CPU-minutes): masks normalised
    # across sources, so the stems sum to the mixture
    "unet_softmax": ["model=unet", "model.mask=softmax"],
    # the screening's direction for unet's depth (bench_screen, 10 CPU-minutes): two encoder
    # levels instead of three; the 1024-wide level's convolutions are most of a step's cost
    "unet_channels2": ["model=unet", "model.channels=[256,512]"],
    # glibc's malloc defaults (before keep_freed_memory): fewer steps for the same CPU time
    "simple_demucs_glibc_malloc": ["model=simple_demucs", "keep_freed_memory=false", BATCH4],
    "simple_demucs_mrstft_glibc_malloc": [
        "model=simple_demucs",
        "loss=l1_mrstft",
        "keep_freed_memory=false",
        BATCH4,
    ],
    "hdemucs_low": ["model=hdemucs_low"],
    "openunmix": ["model=openunmix"],
    # the screening's direction for Open-Unmix (bench_screen, 10 CPU-minutes), as it was for
    # simple_demucs: batch 2, twice the updates for the same samples
    "openunmix_batch2": ["model=openunmix", "data.batch_size=2", VAL_EVERY_EPOCH],
    # the screening's direction for Open-Unmix's width (bench_screen, 10 CPU-minutes, seeds 1
    # and 2): 256-wide BiLSTMs instead of 512, 1.4x the steps in the same CPU time; confirmed,
    # Open-Unmix's bench default since (conf/experiment_model/bench_openunmix.yaml)
    "openunmix_hidden256": ["model=openunmix", "model.hidden_size=256", VAL_EVERY_EPOCH],
    # the package's umxhq width, the `openunmix` preset's until that confirmation: the base
    # of every Open-Unmix row before it
    "openunmix_hidden512": ["model=openunmix", "model.hidden_size=512", VAL_EVERY_EPOCH],
    # l1_mrstft with one of its three resolutions per step, drawn at random (a third of the
    # spectral term's cost), at simple_demucs' bench default batch 2; its base is simple_demucs
    "simple_demucs_mrstft_sampled": ["model=simple_demucs", "loss=l1_mrstft_sampled"],
    # the screening's direction for Open-Unmix's validation (bench_screen, 10 CPU-minutes):
    # validation every 4th epoch, 1.6x the steps in the same CPU time (its Wiener-filtered
    # validation was ~40 % of the budget); its base is openunmix_hidden256. Confirmed, Open-Unmix's
    # bench default since, so this is the openunmix preset spelled out
    "openunmix_val4": ["model=openunmix", "trainer.check_val_every_n_epoch=4"],
    # the architecture screen's direction for simple_demucs (bench_screen, 10 CPU-minutes): one
    # BiLSTM layer at the bottleneck instead of two, 1.5x the steps in the same CPU time and
    # +0.33 dB best validation; its base is simple_demucs. Not confirmed at 30 CPU-minutes
    # (-0.22 dB, BENCHMARKS.md): two layers stay, this reproduces that row
    "simple_demucs_lstm1": ["model=simple_demucs", "model.lstm_layers=1"],
    # the spectral term per step rather than per CPU-second (where a GPU makes the model, not
    # the loss, the cost): both losses for the same 1536 steps (24 epochs at batch 2), run with a
    # --budget that does not bind
    "simple_demucs_steps1536": ["model=simple_demucs", "+trainer.max_steps=1536"],
    "simple_demucs_mrstft_steps1536": [
        "model=simple_demucs",
        "loss=l1_mrstft",
        "+trainer.max_steps=1536",
    ],
    "htdemucs_small": ["model=htdemucs_small"],
    "bs_roformer_small": ["model=bs_roformer_small"],
}
DSP = ("hpss_repet", "hpss_nmf")
PRESETS = [*LEARNED, *DSP]  # every name `run` and `report` accept

# "epoch 3 step 128 | 4.1 min wall, 4.0 min CPU | ... | val/sdr 1.23 dB (...)"
EPOCH_LINE = re.compile(
    r"step (?P<step>\d+) \| [\d.]+ min wall, (?P<cpu>[\d.]+) min CPU .*?"
    r"val/sdr (?P<sdr>-?[\d.]+|nan) dB"
)
BUDGET_LINE = re.compile(r"CPU time budget of \d+ s reached after (?P<steps>\d+) steps")


def bench_root() -> str:
    return os.environ.get("MSS_BENCH_ROOT", str(REPO.parent / "bench_data" / "bench"))


def command(preset: str, seed: int, run_dir: Path, budget: float) -> list[str]:
    python = sys.executable
    if preset in DSP:
        return [
            python, "eval.py", f"model={preset}", "data=musdb18hq", f"data.root={bench_root()}",
            f"output_dir={run_dir / 'eval'}", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
    return [
        python, "train.py", "experiment=bench", f"seed={seed}", *LEARNED[preset],
        f"callbacks.cpu_budget.max_cpu_seconds={budget:g}", f"hydra.run.dir={run_dir}",
        # a run killed half-way (a reboot) picks up its last checkpoint, CPU time spent included
        "ckpt_path=auto",
    ]  # fmt: skip


def run_one(preset: str, seed: int, root: Path, budget: float) -> str:
    run_dir = root / preset / f"seed{seed}"
    if (run_dir / "eval" / "summary.csv").is_file():
        return f"{preset} seed {seed}: done before, skipped"
    code = launch(command(preset, seed, run_dir, budget), run_dir)
    return f"{preset} seed {seed}: exit {code} ({run_dir})"


def launch(cmd: list[str], run_dir: Path) -> int:
    """Run ``cmd`` on one thread with its output in ``run_dir/stdout.log``; its exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(run_dir / "stdout.log", "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        return subprocess.call(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def run(args: argparse.Namespace) -> None:
    if args.runs:
        jobs = [(run.split(":")[0], int(run.split(":")[1])) for run in args.runs]
    else:
        jobs = [
            (preset, 0 if preset in DSP else seed)
            for seed in args.seeds
            for preset in args.presets or []
            if preset not in DSP or seed == args.seeds[0]
        ]
    unknown = [preset for preset, _ in jobs if preset not in PRESETS]
    if unknown or not jobs:
        sys.exit(f"unknown or no preset(s) {unknown}; known: {PRESETS}")
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda job: run_one(*job, args.root, args.budget), jobs):
            print(line, flush=True)


def read_scores(run_dir: Path) -> dict[str, float] | None:
    """SiSEC18 SDR per source, their mean ("avg") and the mean uSDR over sources."""
    path = run_dir / "eval" / "summary.csv"
    if not path.is_file():
        return None
    sdr, usdr = {}, {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["aggregate"] == "sisec18" and row["metric"] == "SDR":
                sdr[row["source"]] = float(row["value"])
            if row["metric"] == "uSDR":
                usdr[row["source"]] = float(row["value"])
    scores = {s: sdr[s] for s in SOURCES}
    scores["avg"] = float(np.mean([sdr[s] for s in SOURCES]))
    scores["uSDR"] = float(np.mean([usdr[s] for s in SOURCES]))
    return scores


def read_curve(run_dir: Path) -> tuple[list[float], list[float], int | None]:
    """(CPU-minutes, validation SDR) after every validation, and the steps the run made: the
    CPU budget's count, or the step of the last validation where no budget ended the run. That
    is the run's end only when it stopped on a validation: the ``*_steps1536`` presets do (1536
    steps are 24 whole epochs at batch 2); a ``trainer.max_steps`` that ends mid-epoch does not
    validate there.

    A run killed and resumed appends to its train.log from its last checkpoint: validations
    logged after that checkpoint appear twice, and the resumed run's lines replace them.
    """
    curve: list[tuple[int, float, float]] = []  # (step, CPU-minutes, SDR)
    steps = None
    log = run_dir / "train.log"
    if log.is_file():
        for line in log.read_text().splitlines():
            if match := EPOCH_LINE.search(line):
                step = int(match["step"])
                curve = [point for point in curve if point[0] < step]
                curve.append((step, float(match["cpu"]), float(match["sdr"])))
            if match := BUDGET_LINE.search(line):
                steps = int(match["steps"])
    if steps is None and curve:
        steps = curve[-1][0]
    return [point[1] for point in curve], [point[2] for point in curve], steps


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def collect(
    root: Path, presets: list[str] | None = None
) -> dict[str, list[tuple[int, dict, tuple]]]:
    """(seed, scores, curve) of every finished run under ``root``, per preset; only ``presets``
    when given, in their order (the plot's legend follows it)."""
    found: dict[str, list] = {}
    for preset in presets or PRESETS:
        for run_dir in sorted((root / preset).glob("seed*")):
            scores = read_scores(run_dir)
            if scores is not None:
                seed = int(run_dir.name.removeprefix("seed"))
                found.setdefault(preset, []).append((seed, scores, read_curve(run_dir)))
    return found


def table(found: dict[str, list]) -> str:
    columns = [*SOURCES, "avg", "uSDR"]
    lines = [
        "| preset | seeds | steps | " + " | ".join(columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    rows = sorted(found.items(), key=lambda item: -np.mean([s["avg"] for _, s, _ in item[1]]))
    for preset, runs in rows:
        seeds = ",".join(str(seed) for seed, _, _ in runs) if preset not in DSP else "-"
        steps = [curve[2] for _, _, curve in runs if curve[2] is not None]
        steps_cell = f"{np.mean(steps):.0f}" if steps else ""
        cells = [_cell([scores[c] for _, scores, _ in runs]) for c in columns]
        lines.append(f"| {preset} | {seeds} | {steps_cell} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(found: dict[str, list]) -> str:
    """One line per learned run: its steps in the budget and its average SDR, for comparing
    runs that shared the machine (the steps a CPU-second buys vary with what else runs)."""
    lines = ["| preset | seed | steps | avg |", "|---|---:|---:|---:|"]
    for preset in (p for p in found if p in LEARNED):
        for seed, scores, (_, _, steps) in found[preset]:
            lines.append(f"| {preset} | {seed} | {steps or ''} | {scores['avg']:.2f} |")
    return "\n".join(lines)


def plot(found: dict[str, list], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # tab20's dark shades, then its light ones, without its grays: the DSP lines are gray, and
    # tab10 has only 10 colours for more learned presets
    tab20 = plt.get_cmap("tab20").colors
    colors = [tab20[i] for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
    learned = [preset for preset in found if preset in LEARNED]
    for index, preset in enumerate(learned):
        color = colors[index % len(colors)]
        for number, (_, _, (cpu, sdr, _)) in enumerate(found[preset]):
            label = f"{preset} ({len(found[preset])} seed{'s' * (len(found[preset]) > 1)})"
            ax.plot(cpu, sdr, color=color, alpha=0.8, lw=1.2, label=label if number == 0 else None)
    for index, preset in enumerate(p for p in found if p in DSP):
        avg = np.mean([scores["avg"] for _, scores, _ in found[preset]])
        style = ("--", ":")[index % 2]
        ax.axhline(avg, color="gray", ls=style, lw=1, label=f"{preset} (test avg, no training)")
    ax.set_xlabel("CPU-minutes of the training process (one thread)")
    ax.set_ylabel("validation SDR, dB (4 held-out tracks)")
    ax.set_title("experiment=bench: validation SDR against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def report(args: argparse.Namespace) -> None:
    unknown = [preset for preset in args.presets or [] if preset not in PRESETS]
    if unknown:
        sys.exit(f"--presets: unknown {unknown}; known: {PRESETS}")
    found = collect(args.root, args.presets)
    if not found:
        sys.exit(f"no finished runs under {args.root}")
    print(table(found))
    print()
    print(run_table(found))
    if args.png:
        plot(found, args.png)


RECORD = ("train.log", "eval/summary.csv", ".hydra/overrides.yaml")


def archive(args: argparse.Namespace) -> None:
    """Copy the record of every finished run under ``--root`` to ``args.dest``."""
    copied = 0
    for run_dir in sorted(args.root.glob("*/seed*")):
        if not (run_dir / "eval" / "summary.csv").is_file():
            continue
        for name in RECORD:
            if (run_dir / name).is_file():
                target = args.dest / run_dir.relative_to(args.root) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / name, target)
        copied += 1
    print(f"archived {copied} finished run(s) from {args.root} to {args.dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "logs" / "quality")
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="train and score presets (skips finished runs)")
    run_parser.add_argument("--presets", nargs="+", help="each with every --seeds")
    run_parser.add_argument("--runs", nargs="+", help="preset:seed pairs, run in this order")
    run_parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    run_parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    run_parser.add_argument("--budget", type=float, default=1800.0, help="CPU seconds per run")
    report_parser = sub.add_parser("report", help="markdown table and validation-SDR plot")
    report_parser.add_argument("--png", type=Path, default=None)
    report_parser.add_argument("--presets", nargs="+", help="only these, in this order")
    archive_parser = sub.add_parser("archive", help="copy finished runs' logs and scores")
    archive_parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    {"run": run, "report": report, "archive": archive}[args.action](args)


if __name__ == "__main__":
    main()

"""Screening of the recipe (issue 11): chunk length, batch size and learning rate per model.

One factor at a time around a preset of ``bench_quality.py``: the preset as it is ("base") and
the preset with one override per run, all with one seed and a shorter CPU budget (10
CPU-minutes unless ``--budget``), side by side. Screening reads validation SDR only
(``test=false``): the test tracks stay for the 3-seed confirmation at the full budget, so that
the recipe is not tuned on them.

    python benchmarks/bench_screen.py run --preset unet \
        --vary module.optimizer.lr=3e-4,3e-3 data.segment=6 data.batch_size=8
    python benchmarks/bench_screen.py report

Each run has its own folder ``<root>/<preset>/<key>_<value>/seed<S>`` (``base`` without one); a run
whose ``train.log`` shows the end of the budget is skipped, one killed half-way resumes from its
last checkpoint. ``report`` prints, per preset, the steps each run made, the best validation
SDR and the mean of its last three validations (the
best alone is the maximum of a noisy curve). It adds the preset's own 30-minute runs of
``bench_quality.py``, cut at the screening budget: more seeds of the base, though not run side
by side with the variants.
"""

from __future__ import annotations

import argparse
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import LEARNED, REPO, command, launch, read_curve  # noqa: E402

BASE = "base"


def split_values(values: str) -> list[str]:
    """``"1,[2,3],{a:4,b:[5]}"`` -> ``["1", "[2,3]", "{a:4,b:[5]}"]``: the commas between values,
    not those inside a list or dict value. Values stay as written (Hydra's own sweep parser
    would turn ``3e-4`` into ``0.0003`` and rename the run folders)."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(values):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(values[start:index])
            start = index + 1
    return [*parts, values[start:]]


def variants(vary: list[str]) -> list[str]:
    """``["a=1,2", "b=[3,4]"]`` -> ``["a=1", "a=2", "b=[3,4]"]``: one override per run."""
    runs = []
    for item in vary:
        key, _, values = item.partition("=")
        if not key or not values:
            sys.exit(f"--vary {item!r}: expected key=value[,value...]")
        runs += [f"{key}={value}" for value in split_values(values)]
    return runs


def run_dir_name(override: str) -> str:
    """A folder name for an override that Hydra reads back as a plain string in
    ``hydra.run.dir``: "=", brackets and commas are override syntax."""
    return re.sub(r"[^\w.\-]+", "_", override).strip("_")


def run_one(preset: str, override: str, seed: int, root: Path, budget: float) -> str:
    run_dir = root / preset / run_dir_name(override) / f"seed{seed}"
    if read_curve(run_dir)[2] is not None:
        return f"{preset} {override} seed {seed}: done before, skipped"
    cmd = [*command(preset, seed, run_dir, budget), "test=false"]
    if override != BASE:
        cmd.append(override)
    code = launch(cmd, run_dir)
    return f"{preset} {override} seed {seed}: exit {code} ({run_dir})"


def run(args: argparse.Namespace) -> None:
    if args.preset not in LEARNED:
        sys.exit(f"unknown preset {args.preset!r}; known: {list(LEARNED)}")
    jobs = [BASE, *variants(args.vary)] if args.with_base else variants(args.vary)
    with ThreadPoolExecutor(args.jobs) as pool:
        lines = pool.map(
            lambda override: run_one(args.preset, override, args.seed, args.root, args.budget),
            jobs,
        )
        for line in lines:
            print(line, flush=True)


def finished_runs(preset_dir: Path) -> list[tuple[str, str, int, list[float]]]:
    """(run, seed, steps, validation SDRs) of every finished screening run of a preset."""
    runs = []
    for run_dir in sorted(preset_dir.glob("*/seed*")):
        _, sdr, steps = read_curve(run_dir)
        if steps is not None and sdr:
            runs.append((run_dir.parent.name, run_dir.name.removeprefix("seed"), steps, sdr))
    return runs


def full_runs_cut(quality_root: Path, preset: str, budget: float) -> list[tuple]:
    """The preset's full-budget runs of bench_quality, cut at the screening budget: more
    seeds of the base for free, though not side by side with the screening runs."""
    runs = []
    for run_dir in sorted((quality_root / preset).glob("seed*")):
        cpu, sdr, _ = read_curve(run_dir)
        cut = [value for minutes, value in zip(cpu, sdr, strict=True) if minutes * 60 <= budget]
        if cut and cpu[-1] * 60 >= budget:
            runs.append((f"{BASE} (30-min run)", run_dir.name.removeprefix("seed"), None, cut))
    return runs


def report(args: argparse.Namespace) -> None:
    lines = [
        "| preset | run | seed | steps | best val SDR | last 3 val SDR |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for preset_dir in sorted(path for path in args.root.glob("*") if path.is_dir()):
        runs = finished_runs(preset_dir)
        runs += full_runs_cut(args.quality_root, preset_dir.name, args.budget)
        rows = [(*run, float(np.mean(run[3][-3:]))) for run in runs]
        for name, seed, steps, sdr, last in sorted(rows, key=lambda row: -row[4]):
            lines.append(
                f"| {preset_dir.name} | {name} | {seed} | {steps or ''} | {max(sdr):.2f} "
                f"| {last:.2f} |"
            )
    if len(lines) == 2:
        sys.exit(f"no finished screening runs under {args.root}")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "logs" / "quality_screen")
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="the base and one run per override (skips finished)")
    run_parser.add_argument("--preset", required=True, help="a learned preset of bench_quality")
    run_parser.add_argument("--vary", nargs="+", required=True, help="key=value[,value...]")
    run_parser.add_argument("--no-base", dest="with_base", action="store_false")
    run_parser.add_argument("--seed", type=int, default=1)
    run_parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    run_parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds per run")
    report_parser = sub.add_parser("report", help="markdown table of the finished runs")
    report_parser.add_argument(
        "--quality-root", type=Path, default=REPO / "logs" / "quality",
        help="bench_quality's runs, whose base runs are cut at --budget and listed too",
    )  # fmt: skip
    report_parser.add_argument("--budget", type=float, default=600.0, help="CPU seconds")
    args = parser.parse_args()
    {"run": run, "report": report}[args.action](args)


if __name__ == "__main__":
    main()

"""Show and save a `Summary`: a rich table, markdown, CSV, JSON and boxplots.

Files written by `save_summary` into the evaluation folder:

- `summary.md`: SiSEC18 table (median over frames, then over tracks) with uSDR, and the mean
  over tracks of the per-track medians;
- `summary.csv`: the same numbers in long form (`aggregate, source, metric, value`);
- `summary.json`: `Summary.to_dict()`;
- `per_track.csv`: frame medians and uSDR of every (track, source);
- `boxplot_<metric>.png`: the per-track values of one metric, a box per source.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from mss.metrics.aggregate import Summary
from mss.metrics.museval_json import atomic_write_bytes, atomic_write_text
from mss.metrics.protocol import METRICS

__all__ = ["markdown", "print_summary", "save_boxplots", "save_summary"]

PLOT_METRICS = (*METRICS, "uSDR")


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.3f}"


def _markdown_table(frame: pd.DataFrame, index_name: str) -> str:
    header = [index_name, *frame.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(frame.columns)) + "|",
    ]
    for name, row in frame.iterrows():
        lines.append("| " + " | ".join([str(name), *(_fmt(v) for v in row)]) + " |")
    return "\n".join(lines)


def markdown(summary: Summary, title: str = "Evaluation") -> str:
    """The summary as markdown: the SiSEC18 table with uSDR, then the mean over tracks."""
    n = len(summary.tracks)
    return "\n".join(
        [
            f"# {title}",
            "",
            f"{n} track(s). SDR/SIR/ISR/SAR: BSSEval v4 (museval protocol, 1 s frames), median "
            "over frames then median over tracks (SiSEC18). uSDR: MDX song-level SDR, mean over "
            "tracks. dB.",
            "",
            _markdown_table(summary.table(), "source"),
            "",
            "## Mean over tracks of the per-track medians",
            "",
            _markdown_table(summary.mean_over_tracks, "source"),
            "",
        ]
    )


def _long_form(summary: Summary) -> pd.DataFrame:
    rows = []
    for aggregate, frame in (
        ("sisec18", summary.sisec18),
        ("mean_over_tracks", summary.mean_over_tracks),
    ):
        for source, row in frame.iterrows():
            rows += [(aggregate, source, metric, float(row[metric])) for metric in frame.columns]
    rows += [("mean_over_tracks", source, "uSDR", float(v)) for source, v in summary.usdr.items()]
    return pd.DataFrame(rows, columns=["aggregate", "source", "metric", "value"])


def print_summary(
    summary: Summary, console: Console | None = None, title: str = "Evaluation"
) -> None:
    """Print the SiSEC18 table with uSDR (rows: sources + average)."""
    console = console or Console()
    table = Table(
        title=f"{title}: {len(summary.tracks)} track(s), SiSEC18 median of medians; uSDR mean (dB)"
    )
    table.add_column("source")
    for column in (*METRICS, "uSDR"):
        table.add_column(column, justify="right")
    frame = summary.table()
    for source, row in frame.iterrows():
        style = "bold" if source == frame.index[-1] else None
        table.add_row(str(source), *(_fmt(v) for v in row), style=style)
    console.print(table)


def _nan_to_none(value):
    """NaN is not JSON; null is what other tools read back as missing."""
    if isinstance(value, dict):
        return {str(k): _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def save_boxplots(summary: Summary, out_dir: str | Path) -> list[Path]:
    """One PNG per metric: a box per source over the per-track values; returns the paths."""
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    paths = []
    per_track = summary.per_track
    for metric in PLOT_METRICS:
        data, labels = [], []
        for source in summary.sources:
            values = per_track.loc[per_track["source"] == source, metric].to_numpy(float)
            data.append(values[~np.isnan(values)])
            labels.append(source)
        figure = Figure(figsize=(1.2 + 1.1 * len(labels), 4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.boxplot(data, tick_labels=labels, showmeans=False)
        axes.set_ylabel(f"{metric} (dB)")
        kind = "song-level" if metric == "uSDR" else "median over frames"
        axes.set_title(f"{metric} per track ({kind})")
        axes.grid(axis="y", alpha=0.3)
        path = out_dir / f"boxplot_{metric}.png"
        atomic_write_bytes(path, _figure_png(figure))
        paths.append(path)
    return paths


def save_summary(
    summary: Summary, out_dir: str | Path, title: str = "Evaluation"
) -> dict[str, Path]:
    """Write summary.md/.csv/.json, per_track.csv and the boxplots into `out_dir`."""
    out_dir = Path(out_dir)
    paths = {
        "markdown": out_dir / "summary.md",
        "csv": out_dir / "summary.csv",
        "json": out_dir / "summary.json",
        "per_track": out_dir / "per_track.csv",
    }
    atomic_write_text(paths["markdown"], markdown(summary, title))
    # 6 decimals: museval's frame scores carry 5; more would only show float noise of the medians
    csv = {"index": False, "float_format": "%.6f"}
    atomic_write_text(paths["csv"], _long_form(summary).to_csv(**csv))
    atomic_write_text(paths["json"], json.dumps(_nan_to_none(summary.to_dict()), indent=2) + "\n")
    atomic_write_text(paths["per_track"], summary.per_track.to_csv(**csv))
    for path in save_boxplots(summary, out_dir):
        paths[path.stem] = path
    return paths

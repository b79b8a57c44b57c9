"""Evaluate a separator on full tracks with the SiSEC18 protocol; the runner behind eval.py.

For each track: read the mixture and stems, separate the whole track with chunked overlap-add
(`mss.apply.separate`), score it with BSSEval v4 (museval, or the fast backend that matches it)
and the song-level uSDR, and write `<out_dir>/tracks/<track>.json` (museval's format)
atomically. A track whose JSON exists is skipped, so an interrupted evaluation picks up where it
stopped; the summary is always rebuilt from the JSON files, so a resumed run reports exactly
what one uninterrupted run would. Estimates are scored as the separator returns them, never
normalised: BSSEval's ISR/SAR and uSDR depend on the level.

Layout of `out_dir`::

    tracks/<track>.json                 museval JSON per track (+ "mss": uSDR and provenance)
    estimates/<track>/<source>.wav      with save_estimates (float32 WAV, not clipped)
    summary.md summary.csv summary.json per_track.csv boxplot_<metric>.png
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from mss.apply import separate
from mss.data.audio import read_mixture, read_stems, write_wav_atomic
from mss.data.index import Track
from mss.errors import ConfigError
from mss.inference import InferenceSettings, resolve_device
from mss.metrics.aggregate import Summary, frame_medians, summarize
from mss.metrics.backends import get_backend
from mss.metrics.museval_json import read_track_json, write_track_json
from mss.metrics.report import print_summary, save_summary
from mss.metrics.usdr import usdr
from mss.models._contract import check_separator
from mss.separator import model_from_config
from mss.utils.paths import ensure_writable_dir

__all__ = [
    "evaluate",
    "evaluate_from_config",
    "select_tracks",
]

log = logging.getLogger(__name__)

# Keys of a track JSON's "mss" entry that must match for a resumed run to reuse the file.
_RESUME_KEYS = ("sources", "backend", "win", "hop", "sample_rate", "num_frames", "separator")


def _meta_mismatch(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}: {found.get(key)!r} there, {expected[key]!r} now"
        for key in _RESUME_KEYS
        if key in expected and found.get(key) != expected[key]
    ]


def _estimates_done(folder: Path, sources: Sequence[str]) -> bool:
    return all((folder / f"{source}.wav").is_file() for source in sources)


def _separate_and_score_track(
    separator: nn.Module,
    track: Track,
    sources: list[str],
    json_path: Path,
    estimates_dir: Path | None,
    inference: InferenceSettings,
    scorer,
    win: float,
    hop: float,
    device: torch.device,
    meta: dict[str, Any],
) -> None:
    mixture = read_mixture(track)  # [C, T]
    start = time.perf_counter()
    estimates = separate(
        separator,
        torch.from_numpy(mixture),
        sample_rate=track.sample_rate,
        device=device,
        **inference.chunking(),
    ).numpy()  # [S, C, T]
    separation_seconds = time.perf_counter() - start
    if estimates_dir is not None:
        # Written before the JSON: the JSON is what marks a track as done.
        for source, estimate in zip(sources, estimates, strict=True):
            write_wav_atomic(estimates_dir / f"{source}.wav", estimate, track.sample_rate)

    references = read_stems(track, sources).transpose(0, 2, 1)  # [S, T, C], museval's layout
    estimates = estimates.transpose(0, 2, 1)
    start = time.perf_counter()
    scores = scorer(
        references,
        estimates,
        sources,
        int(win * track.sample_rate),
        int(hop * track.sample_rate),
        track_name=track.name,
    )
    scoring_seconds = time.perf_counter() - start
    song_sdr = usdr(references, estimates)
    extra = {
        **meta,
        "usdr": {source: float(v) for source, v in zip(sources, song_sdr, strict=True)},
        "separation_seconds": round(separation_seconds, 3),
        "scoring_seconds": round(scoring_seconds, 3),
    }
    write_track_json(json_path, track.name, scores, win=win, hop=hop, extra=extra)
    medians = frame_medians(scores)
    log.info(
        "%s: SDR %s (separated in %.1f s, scored in %.1f s)",
        track.name,
        " ".join(f"{s}={medians[s]['SDR']:.2f}" for s in sources),
        separation_seconds,
        scoring_seconds,
    )


def evaluate(
    separator: nn.Module,
    tracks: Sequence[Track],
    sources: Sequence[str],
    out_dir: str | Path,
    inference: InferenceSettings | None = None,
    backend: str = "museval",
    save_estimates: bool = False,
    overwrite: bool = False,
    win: float = 1.0,
    hop: float = 1.0,
    tag: Mapping[str, Any] | None = None,
) -> Summary:
    """Separate and score every track; write per-track JSON and the summary files.

    Args:
        separator: `separator(mix[B, C, T]) -> stems[B, S, C, T]`; put in eval mode here.
        tracks: the tracks to evaluate (full length).
        sources: the data's sources; must equal `separator.sources` (same order).
        out_dir: evaluation folder (see the module docstring for its layout).
        inference: chunking, shifts and the device where the separator (and the fast
            backend) run (default `InferenceSettings()`: conf/inference/default.yaml).
        backend: "museval" (reference) or "fast".
        save_estimates: also write the estimates as float32 WAV.
        overwrite: re-evaluate tracks whose JSON already exists (default: skip them).
        win, hop: BSSEval frame length and hop in seconds (SiSEC18: 1 and 1).
        tag: provenance stored in every JSON under "mss"; its "separator" entry must match on
            resume, so that scores of two different separators are never mixed.

    Returns:
        The `Summary` over `tracks` (SiSEC18 medians, mean over tracks, uSDR, per track).
    """
    sources = [str(s) for s in sources]
    tracks = list(tracks)
    if not tracks:
        raise ConfigError("no tracks to evaluate")
    names = [t.name for t in tracks]
    if len(set(names)) != len(names):
        raise ConfigError(f"track names must be unique, got {names}")
    contract = check_separator(separator, sources, tracks[0].sample_rate, tracks[0].channels)
    for track in tracks:
        if track.sample_rate != tracks[0].sample_rate or track.channels != tracks[0].channels:
            raise ConfigError(
                f"track {track.name!r} is {track.sample_rate} Hz / {track.channels} ch, unlike "
                f"{tracks[0].name!r} ({tracks[0].sample_rate} Hz / {tracks[0].channels} ch)"
            )
    inference = inference or InferenceSettings()
    device = resolve_device(inference.device)
    scorer = get_backend(backend, device=str(device))
    inference = inference.for_model(contract)
    separator = separator.eval().to(device)
    out_dir = Path(out_dir)
    (out_dir / "tracks").mkdir(parents=True, exist_ok=True)

    track_scores, track_usdr = {}, {}
    skipped = 0
    with Progress(
        TextColumn("[bold]eval[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("", total=len(tracks))
        for track in tracks:
            progress.update(task, description=track.name)
            json_path = out_dir / "tracks" / f"{track.name}.json"
            estimates_dir = out_dir / "estimates" / track.name if save_estimates else None
            meta = {
                "sources": sources,
                "backend": backend,
                "win": float(win),
                "hop": float(hop),
                "sample_rate": track.sample_rate,
                "num_frames": track.num_frames,
                "segment": inference.segment,
                "overlap": inference.overlap,
                "shifts": inference.shifts,
                **(dict(tag) if tag else {}),
            }
            reuse = json_path.is_file() and not overwrite
            if reuse:
                scores, found = read_track_json(json_path)
                mismatch = _meta_mismatch(found, meta)
                if mismatch:
                    raise ConfigError(
                        f"{json_path} was written by a different evaluation ({'; '.join(mismatch)})"
                        "; pass overwrite=true to replace it, or use another output_dir"
                    )
                # scored earlier without estimates: run again to write them
                reuse = estimates_dir is None or _estimates_done(estimates_dir, sources)
            if reuse:
                skipped += 1
            else:
                _separate_and_score_track(
                    separator, track, sources, json_path, estimates_dir, inference, scorer,
                    win, hop, device, meta,
                )  # fmt: skip
                scores, found = read_track_json(json_path)
            track_scores[track.name] = scores
            track_usdr[track.name] = found["usdr"]
            progress.advance(task)
    if skipped:
        log.info("reused %d track(s) already scored in %s", skipped, out_dir / "tracks")

    summary = summarize(track_scores, track_usdr, sources)
    save_summary(summary, out_dir)
    return summary


def select_tracks(tracks: Sequence[Track], names: Sequence[str] | None) -> list[Track]:
    """The tracks called `names` (in that order), or all of them when `names` is None/empty."""
    if not names:
        return list(tracks)
    by_name = {t.name: t for t in tracks}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"unknown track(s) {missing}; available: {sorted(by_name)}")
    return [by_name[str(n)] for n in names]


def evaluate_from_config(cfg) -> Summary:
    """Run the evaluation that an eval config (conf/eval.yaml) describes; print and return it."""
    from hydra.utils import instantiate

    if cfg.split not in ("test", "valid"):
        raise ConfigError(f"split must be 'test' or 'valid', got {cfg.split!r}")
    # The output folder and the separator first: a wrong path fails before any data is
    # indexed or generated.
    ensure_writable_dir(cfg.output_dir, "output_dir")
    separator, origin = model_from_config(cfg)
    datamodule = instantiate(cfg.data)
    # a wrong model/data pair fails before any data is generated or read
    check_separator(separator, datamodule.sources, datamodule.sample_rate)
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()  # generates the toy set on first use
    tracks = datamodule.test_tracks() if cfg.split == "test" else datamodule.valid_tracks()
    tracks = select_tracks(tracks, cfg.get("tracks"))
    if not tracks:
        raise ConfigError(f"the {cfg.split} split of the data has no tracks")
    metrics = cfg.metrics
    summary = evaluate(
        separator,
        tracks,
        datamodule.sources,
        cfg.output_dir,
        inference=InferenceSettings.from_config(cfg),
        backend=metrics.backend,
        save_estimates=cfg.save_estimates,
        overwrite=cfg.overwrite,
        win=metrics.get("win", 1.0),
        hop=metrics.get("hop", 1.0),
        tag={"separator": origin, "split": cfg.split},
    )
    print_summary(summary, title=f"{origin} on {cfg.split} ({metrics.backend})")
    log.info("results in %s", Path(cfg.output_dir).resolve())
    return summary

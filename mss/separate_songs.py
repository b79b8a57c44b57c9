"""The runner behind separate.py: find the songs, separate each, report, fail at the end.

A bad song (unreadable, empty, NaN samples, 6 channels, a text file named .mp3) gets one line
naming it and the problem; the other songs are still separated, and the run ends with an error
(exit status 2) that counts the failures. Songs whose stems all exist are skipped unless
`overwrite=true`, so a rerun after an interruption only does what is missing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from mss.errors import ConfigError, UserError
from mss.inference import InferenceSettings
from mss.separator import FileResult, Progress, Separator, model_from_config, stem_mix
from mss.utils.paths import ensure_writable_dir

__all__ = [
    "AUDIO_EXTENSIONS",
    "build_separator",
    "check_distinct_outputs",
    "find_songs",
    "separate_from_config",
]

log = logging.getLogger(__name__)

# what a folder is searched for (any file given by name is tried whatever its extension)
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff",
    ".wma", ".mp4", ".webm", ".mka",
)  # fmt: skip


def find_songs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files named, and the audio files of the folders named (recursively, sorted;
    hidden files skipped), in the order given. A name that does not exist is kept: it fails
    later with the other bad files, one line each."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    songs: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            songs += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in AUDIO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            songs.append(path)
    return list(dict.fromkeys(songs))


def check_distinct_outputs(songs: Iterable[Path]) -> None:
    """Two songs with the same name would write into the same folder: refuse up front."""
    by_name: dict[str, Path] = {}
    for song in songs:
        other = by_name.setdefault(song.stem, song)
        if other != song:
            raise ConfigError(
                f"{other} and {song} would both write to <output_dir>/{song.stem}/; "
                "rename one or separate them in two runs with different output_dir"
            )


def build_separator(cfg: DictConfig) -> tuple[Separator, str]:
    """The separator a separate config asks for (ckpt=, onnx= or model=) and its origin."""
    settings = InferenceSettings.from_config(cfg)
    model, origin = model_from_config(cfg)
    return Separator(model, settings), origin


def _progress_reporter(song: Path) -> tuple[Progress, object | None]:
    """A progress bar with time left on a terminal; plain log lines every 10 % otherwise."""
    if sys.stdout.isatty():
        from rich import progress as rich

        bar = rich.Progress(
            rich.TextColumn("{task.description}"),
            rich.BarColumn(),
            rich.TextColumn("{task.percentage:>3.0f}%"),
            rich.TimeElapsedColumn(),
            rich.TimeRemainingColumn(),
            transient=True,
        )
        task = bar.add_task(song.name, total=None)
        bar.start()

        def update(done: float, total: float | None) -> None:
            bar.update(task, completed=done, total=total)

        return update, bar
    next_report = [0.1]

    def log_line(done: float, total: float | None) -> None:
        if total and done / total >= next_report[0]:
            log.info("%s: %.0f%% (%.0f of %.0f s)", song.name, 100 * done / total, done, total)
            while next_report[0] <= done / total:
                next_report[0] += 0.1

    return log_line, None


def _summary(result: FileResult) -> str:
    clipped = result.clipped
    clip_note = (
        "; clipped samples: " + ", ".join(f"{k} {v}" for k, v in clipped.items()) if clipped else ""
    )
    return (
        f"{result.input}: {result.duration:.1f} s separated in {result.seconds:.1f} s "
        f"(real-time factor {result.real_time_factor:.3f}, peak memory "
        f"{result.peak_memory_mb:.0f} MB) -> {next(iter(result.stems.values())).parent}"
        f"{clip_note}"
    )


def separate_from_config(cfg: DictConfig) -> list[FileResult]:
    """Run what a separate config (conf/separate.yaml) asks for; raise at the end if any song
    failed (`UserError` counting them, after every other song was done)."""
    inputs = cfg.get("input")
    if inputs is None or inputs == "???":
        raise ConfigError("input=...: give a song, a folder, or a list [a.mp3,b.wav]")
    if isinstance(inputs, ListConfig):
        inputs = [str(i) for i in inputs]
    songs = find_songs(inputs)
    if not songs:
        raise ConfigError(f"input={inputs}: no audio files found")
    check_distinct_outputs(songs)
    output_dir = ensure_writable_dir(cfg.output_dir, "output_dir")
    # a bad format or stem choice fails before the model is loaded
    from mss.io import OutputFormat

    fmt = OutputFormat(cfg.format, cfg.get("bit_depth"), cfg.clip)
    sources = list(cfg.sources) if cfg.get("sources") else None
    separator, origin = build_separator(cfg)
    names, _ = stem_mix(separator.sources, cfg.get("two_stems"), sources)
    log.info(
        "%s: %d song(s) -> %s/<song>/{%s}%s on %s",
        origin, len(songs), output_dir, ",".join(names), fmt.extension, separator.device,
    )  # fmt: skip

    results, failures = [], []
    start = time.perf_counter()
    for song in songs:
        progress, bar = _progress_reporter(song)
        try:
            result = separator.separate_file(
                song,
                output_dir,
                format=cfg.format,
                bit_depth=cfg.get("bit_depth"),
                clip=cfg.clip,
                two_stems=cfg.get("two_stems"),
                sources=sources,
                overwrite=cfg.overwrite,
                progress=progress,
            )
        except UserError as error:
            failures.append(song)
            log.error("%s", error)
            continue
        finally:
            if bar is not None:
                bar.stop()
        results.append(result)
        if result.skipped:
            log.info("%s: skipped, its stems exist (overwrite=true redoes it)", song)
        else:
            log.info("%s", _summary(result))
    done = sum(not r.skipped for r in results)
    log.info(
        "%d separated, %d skipped, %d failed in %.1f s",
        done, len(results) - done, len(failures), time.perf_counter() - start,
    )  # fmt: skip
    if failures:
        raise UserError(
            f"{len(failures)} of {len(songs)} song(s) failed (each named above): "
            + ", ".join(str(f) for f in failures[:5])
            + (" ..." if len(failures) > 5 else "")
        )
    return results

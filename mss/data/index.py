"""Track index over a MUSDB18-HQ-layout root, validated once from the WAV headers.

Layout::

    root/train/<track>/{mixture.wav, <source>.wav for each source}
    root/test/<track>/...

Every file's metadata (frames, sample rate, channels) is read once with ``soundfile.info``
and checked here, so that a bad dataset fails at start-up with a message naming the track and
the file, not in a data-loader worker hours into training.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from mss.errors import UserError
from mss.io.read import nonfinite_problem

MONO_POLICIES = ("error", "upmix")
# Only so many problems are listed in one error; the count of the rest is given.
_MAX_LISTED = 20


class DatasetError(UserError, ValueError):
    """A dataset on disk is missing, incomplete, or inconsistent."""


# Only float files can hold NaN or Inf; integer PCM (MUSDB18-HQ's 16-bit WAV) cannot.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_SCAN_FRAMES = 1 << 18


def _scan_nonfinite(path: Path, info) -> str | None:
    """Read a float file block by block and describe its first NaN/Inf sample, if any."""
    if info.subtype not in FLOAT_SUBTYPES:
        return None
    start = 0
    for block in sf.blocks(str(path), blocksize=_SCAN_FRAMES, dtype="float32", always_2d=True):
        problem = nonfinite_problem(block.T, start, info.samplerate)
        if problem:
            return problem
        start += len(block)
    return None


@dataclass(frozen=True)
class Track:
    """One song folder.

    ``num_frames``, ``sample_rate`` and ``channels`` are shared by all its files (mono files
    accepted under ``mono="upmix"`` count as the track's channel count: they are read upmixed).
    """

    name: str
    path: Path
    subset: str
    num_frames: int
    sample_rate: int
    channels: int

    def file(self, stem: str) -> Path:
        """Path of ``<stem>.wav``; ``stem`` is ``"mixture"`` or a source name."""
        return self.path / f"{stem}.wav"

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.num_frames / self.sample_rate


def check_mono_policy(mono: str) -> str:
    if mono not in MONO_POLICIES:
        raise ValueError(f"mono must be one of {MONO_POLICIES}, got {mono!r}")
    return mono


def _raise(problems: list[str], where: Path) -> None:
    if len(problems) == 1:
        raise DatasetError(f"dataset {where}: {problems[0]}")
    shown = problems[:_MAX_LISTED]
    more = len(problems) - len(shown)
    lines = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
    raise DatasetError(f"{len(problems)} problem(s) in dataset {where}:\n  {lines}")


def _index_track(folder: Path, subset: str, stems: Sequence[str], sample_rate: int, mono: str):
    """Return ``(Track, [])`` or ``(None, problems)`` for one track folder."""
    infos: dict[str, sf._SoundFileInfo] = {}
    problems = []
    for stem in stems:
        path = folder / f"{stem}.wav"
        where = f"track '{folder.name}': {path}"
        if not path.is_file():
            problems.append(f"{where}: missing (expected one file per stem: {list(stems)})")
            continue
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as err:  # libsndfile errors are RuntimeErrors
            problems.append(f"{where}: unreadable or corrupt audio file ({err})")
            continue
        if info.frames <= 0:
            problems.append(f"{where}: contains no audio frames")
        elif info.samplerate != sample_rate:
            problems.append(
                f"{where}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
                "(resample the dataset or set data.sample_rate)"
            )
        elif info.channels not in (1, 2):
            problems.append(
                f"{where}: {info.channels} channels; only mono and stereo are supported"
            )
        elif info.channels == 1 and mono == "error":
            problems.append(
                f"{where}: mono file; set data.mono=upmix to duplicate mono files to both channels"
            )
        else:
            try:
                nonfinite = _scan_nonfinite(path, info)
            except (RuntimeError, OSError) as err:
                problems.append(f"{where}: unreadable or corrupt audio file ({err})")
                continue
            if nonfinite:
                problems.append(f"{where}: {nonfinite}; fix or remove the file")
            else:
                infos[stem] = info
    if problems:
        return None, problems
    ref_stem = stems[0]
    ref = infos[ref_stem]
    for stem in stems[1:]:
        info = infos[stem]
        where = f"track '{folder.name}': {folder / f'{stem}.wav'}"
        if info.frames != ref.frames:
            problems.append(
                f"{where}: {info.frames} frames but {ref_stem}.wav has {ref.frames}; "
                "all files of a track must have the same length"
            )
        if info.channels != ref.channels and mono == "error":
            problems.append(
                f"{where}: {info.channels} channel(s) but {ref_stem}.wav has {ref.channels}"
            )
    if problems:
        return None, problems
    channels = max(info.channels for info in infos.values())
    if mono == "upmix":
        channels = 2
    track = Track(folder.name, folder, subset, int(ref.frames), int(ref.samplerate), channels)
    return track, []


def _track_folders(root: str | os.PathLike, subset: str, key: str) -> tuple[Path, list[Path]]:
    """``(root/subset, its track folders sorted by name)``; raises if there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"dataset root {root} does not exist or is not a folder "
            f"(expected {root}/{subset}/<track>/mixture.wav); set {key}"
        )
    folder = root / subset
    if not folder.is_dir():
        raise DatasetError(f"dataset root {root} has no '{subset}' folder (expected {folder})")
    # hidden folders are skipped: they hold temporary files of interrupted writers
    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"no track folders in {folder} (expected {folder}/<track>/mixture.wav)")
    return folder, folders


def check_root_stems(
    root: str | os.PathLike, subset: str, sources: Sequence[str], key: str = "data.root"
) -> None:
    """Refuse, in one line, a root where some of ``sources`` is in none of the tracks.

    When several roots train together, such a root has another stem set (e.g. ``vocals,
    accompaniment`` against MUSDB's four); :func:`index_tracks` would list the missing file
    of every track instead. Stems beyond ``sources`` are fine: they are not read.
    """
    folder, folders = _track_folders(root, subset, key)
    found = {p.stem for f in folders for p in f.glob("*.wav")} - {"mixture"}
    absent = [s for s in sources if s not in found]
    if absent:
        raise DatasetError(
            f"{key}={Path(root).expanduser()}: no track of {folder} has {', '.join(absent)} "
            f"(its stems: {', '.join(sorted(found)) or 'none'}); every root needs the stems of "
            f"data.sources {list(sources)}"
        )


def index_tracks(
    root: str | os.PathLike,
    subset: str,
    sources: Sequence[str],
    sample_rate: int = 44100,
    mono: str = "error",
    key: str = "data.root",
) -> list[Track]:
    """Index and validate the tracks of ``root/subset``, sorted by name.

    Args:
        root: dataset root holding ``train/`` and ``test/``.
        subset: ``"train"`` or ``"test"`` (any sub-folder name works).
        sources: stem names; each track needs ``mixture.wav`` and ``<source>.wav`` for each.
        sample_rate: every file must have this rate (nothing is resampled).
        mono: ``"error"`` refuses mono files; ``"upmix"`` accepts them, and reads them as two
            identical channels (``Track.channels`` is then 2).
        key: the config key that set ``root``, named when the root is missing.

    Raises:
        DatasetError: listing every problem found (missing root or subset, no track folders,
            missing stem, corrupt file, lengths / sample rates / channel counts that disagree
            inside a track, mono refused), each naming the track and the file.
    """
    check_mono_policy(mono)
    if not sources:
        raise ValueError("sources must name at least one stem")
    if len(set(sources)) != len(sources) or "mixture" in sources:
        raise ValueError(f"sources must be distinct and not include 'mixture', got {list(sources)}")
    folder, folders = _track_folders(root, subset, key)
    stems = ["mixture", *sources]
    tracks, problems = [], []
    for track_folder in folders:
        track, found = _index_track(track_folder, subset, stems, sample_rate, mono)
        problems += found
        if track is not None:
            tracks.append(track)
    if problems:
        _raise(problems, folder)
    return tracks


def split_tracks(
    tracks: Sequence[Track],
    validation_tracks: Iterable[str],
    key: str = "data.validation_tracks",
) -> tuple[list[Track], list[Track]]:
    """Split ``tracks`` into ``(train, valid)`` by name; every validation name must exist.

    ``key`` is the config key of the names, named in the error.

    Raises:
        DatasetError: naming the validation tracks that are not in ``tracks``.
    """
    names = list(validation_tracks)
    known = {t.name for t in tracks}
    missing = [n for n in names if n not in known]
    if missing:
        where = tracks[0].path.parent if tracks else "the training set"
        raise DatasetError(
            f"validation track(s) not found in {where}: {missing} "
            f"(set {key} to names of folders of the train subset)"
        )
    wanted = set(names)
    train = [t for t in tracks if t.name not in wanted]
    valid = [t for t in tracks if t.name in wanted]
    return train, valid


def musdb_validation_tracks() -> list[str]:
    """The standard MUSDB18 validation split: the 14 train tracks listed in ``musdb``'s mus.yaml.

    Read from the file without importing ``musdb`` (its import needs ffmpeg on PATH).
    """
    import yaml

    spec = importlib.util.find_spec("musdb")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the musdb package is not installed: it ships the standard validation split; "
            "install musdb or set data.validation_tracks explicitly"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / "mus.yaml"
    with open(path) as f:
        return list(yaml.safe_load(f)["validation_tracks"])

"""Embedded toy dataset: small, deterministic, musically structured songs in the MUSDB18-HQ layout.

Every song is composed and rendered with numpy alone, so the default ``data=toy`` needs no
download. Each stem has its own timbre and register so that separation is learnable:

- drums: kick (pitch-swept sine), snare (noise burst + tonal body), hi-hats (high-passed noise)
  on a 16th-note grid with per-bar variations and fills;
- bass: chord roots around 40-110 Hz, bright harmonic tone, per-song rhythm figure;
- other: chords (triads near middle C) as sustained pads or rhythmic stabs, a few harmonics;
- vocals: a monophonic lead melody (about 300-800 Hz) in phrases with rests, vibrato and
  vowel-like formant envelopes.

Layout (same as MUSDB18-HQ)::

    root/train/toy-train-00/{mixture,drums,bass,other,vocals}.wav    44.1 kHz stereo
    root/test/toy-test-00/...
    root/toy_manifest.json

Files are 16-bit PCM and ``mixture`` is the *integer* sum of the integer stems, so once read
back as float32 (``x / 32768``) ``mixture == sum(stems)`` holds exactly, in any summation
order: every value is a multiple of 2**-15 below 4 in magnitude, which float32 represents
exactly. (Writing float32 files would make the identity depend on the order of float additions.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from mss.data.index import DatasetError

PARTS = ("drums", "bass", "other", "vocals")
# Stems that may be requested besides the four parts: name -> parts summed into it.
GROUPS = {"accompaniment": ("drums", "bass", "other")}
MANIFEST = "toy_manifest.json"
# Bump when the rendering changes, so that cached datasets are regenerated.
GENERATOR_VERSION = 1

_SUBSET_KEYS = {"train": 0, "test": 1}
# Scale degrees (semitones above the key root) and chord quality of common major-key chords.
_CHORDS = {
    "I": (0, (0, 4, 7)),
    "ii": (2, (0, 3, 7)),
    "iii": (4, (0, 3, 7)),
    "IV": (5, (0, 4, 7)),
    "V": (7, (0, 4, 7)),
    "vi": (9, (0, 3, 7)),
}
_PROGRESSIONS = (
    ("I", "V", "vi", "IV"),
    ("vi", "IV", "I", "V"),
    ("I", "vi", "IV", "V"),
    ("I", "IV", "ii", "V"),
    ("ii", "V", "I", "vi"),
    ("I", "iii", "IV", "V"),
)
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
# Vowel formants (F1, F2, F3) in Hz, rough adult values.
_VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (300, 870, 2240),
    (570, 840, 2410),
    (270, 2290, 3010),
)


def track_names(subset: str, count: int) -> list[str]:
    """Folder names of the toy tracks of a subset, e.g. ``toy-train-00``."""
    return [f"toy-{subset}-{i:02d}" for i in range(count)]


def _midi_hz(note: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


def _envelope(n: int, sr: int, attack: float, decay: float, release: float) -> np.ndarray:
    """Attack / exponential decay / linear release envelope of ``n`` samples."""
    t = np.arange(n) / sr
    env = np.exp(-t / decay) if decay > 0 else np.ones(n)
    na = max(1, min(n, int(attack * sr)))
    env[:na] *= np.linspace(0.0, 1.0, na, endpoint=False)
    nr = max(1, min(n, int(release * sr)))
    env[-nr:] *= np.linspace(1.0, 0.0, nr)
    return env


def _fade_out(sig: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    """Ramp the tail of a decaying hit to zero: cutting it off would click."""
    n = min(len(sig), int(seconds * sr))
    sig[len(sig) - n :] *= np.linspace(1.0, 0.0, n)
    return sig


def _add(buf: np.ndarray, start: int, sig: np.ndarray) -> None:
    """Add ``sig`` into ``buf`` at ``start``, cropping at the end of the buffer."""
    n = min(len(sig), len(buf) - start)
    if n > 0:
        buf[start : start + n] += sig[:n]


def _harmonics(phase: np.ndarray, amps: Sequence[float]) -> np.ndarray:
    """``sum_k amps[k-1] * sin(k * phase)``.

    Uses the recurrence ``sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x)``: two
    transcendental calls per note instead of one per harmonic (rendering stays ~2x faster).
    """
    out = np.zeros_like(phase)
    two_cos = 2 * np.cos(phase)
    prev, cur = np.zeros_like(phase), np.sin(phase)
    for a in amps:
        if a:
            out += a * cur
        prev, cur = cur, two_cos * cur - prev
    return out


def _harmonic_tone(freq: float, n: int, sr: int, amps: Sequence[float], phase0: float = 0.0):
    """A steady tone ``[n]``; harmonics above ``sr / 2 - 1 kHz`` are dropped (no aliasing)."""
    amps = [a for k, a in enumerate(amps, start=1) if k * freq < sr / 2 - 1000]
    return _harmonics(2 * np.pi * freq * np.arange(n) / sr + phase0, amps)


class _Song:
    """Score of one song: tempo, key, chord per bar, and the rendering of each part."""

    def __init__(self, rng: np.random.Generator, seconds: float, sr: int):
        self.rng = rng
        self.sr = sr
        self.n = int(round(seconds * sr))
        self.bpm = float(rng.uniform(88, 132))
        self.step = 60.0 / self.bpm / 4  # one 16th note, seconds
        self.n_steps = int(math.ceil(seconds / self.step))
        self.n_bars = (self.n_steps + 15) // 16
        self.key = int(rng.integers(0, 12))
        progression = _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))]
        self.chords = [_CHORDS[progression[b % len(progression)]] for b in range(self.n_bars)]

    def at(self, step: float) -> int:
        return int(round(step * self.step * self.sr))

    def drums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng, sr = self.rng, self.sr
        kick, snare, hats = np.zeros(self.n), np.zeros(self.n), np.zeros(self.n)
        sixteenths = bool(rng.random() < 0.4)
        extra_kicks = [s for s in (3, 6, 10, 11, 14) if rng.random() < 0.35]
        kick_f0 = rng.uniform(45, 60)
        snare_f0 = rng.uniform(170, 230)
        for bar in range(self.n_bars):
            base = bar * 16
            fill = bar % 4 == 3 and rng.random() < 0.7
            for s in sorted({0, 8, *extra_kicks}):
                n = int(0.35 * sr)
                t = np.arange(n) / sr
                # pitch drops fast from ~3x the body frequency: the "thump" of a kick
                freq = kick_f0 * (1 + 2.0 * np.exp(-t / 0.03))
                hit = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.22)
                hit[: int(0.004 * sr)] += rng.standard_normal(int(0.004 * sr)) * 0.3
                _add(kick, self.at(base + s), _fade_out(hit, sr) * rng.uniform(0.85, 1.0))
            snare_steps = [4, 12] + ([13, 14, 15] if fill else [])
            for s in snare_steps:
                n = int(0.25 * sr)
                t = np.arange(n) / sr
                noise = np.diff(rng.standard_normal(n + 1))  # first difference: brighter noise
                hit = 0.5 * noise * np.exp(-t / 0.09) + np.sin(2 * np.pi * snare_f0 * t) * np.exp(
                    -t / 0.05
                )
                gain = 0.8 if s in (4, 12) else rng.uniform(0.35, 0.6)
                _add(snare, self.at(base + s), _fade_out(hit, sr) * gain)
            for s in range(0, 16, 1 if sixteenths else 2):
                open_hat = s % 8 == 6 and rng.random() < 0.25
                n = int((0.25 if open_hat else 0.06) * sr)
                t = np.arange(n) / sr
                noise = np.diff(rng.standard_normal(n + 2), n=2)  # second difference: hiss
                accent = 1.0 if s % 4 == 0 else 0.6
                hit = 0.25 * accent * noise * np.exp(-t / (0.08 if open_hat else 0.015))
                _add(hats, self.at(base + s), _fade_out(hit, sr))
        return kick, snare, hats

    def bass(self) -> np.ndarray:
        rng, sr = self.rng, self.sr
        out = np.zeros(self.n)
        figures = (
            ((0, 4, 0), (4, 4, 0), (8, 4, 0), (12, 4, 0)),  # quarter notes
            ((0, 2, 0), (2, 2, 0), (4, 2, 12), (6, 2, 0), (8, 2, 0), (10, 2, 7), (12, 4, 0)),
            ((0, 6, 0), (6, 2, 0), (8, 3, 7), (11, 5, 0)),  # syncopated
            ((0, 3, 0), (3, 3, 0), (6, 2, 12), (8, 3, 0), (11, 3, 7), (14, 2, 0)),
        )
        figure = figures[rng.integers(len(figures))]
        tilt = rng.uniform(0.8, 1.4)
        amps = [1.0 / k**tilt for k in range(1, 9)]
        for bar in range(self.n_bars):
            degree, _ = self.chords[bar]
            root = 28 + (self.key + degree) % 12  # E1..D#2, 41-78 Hz
            for start, length, interval in figure:
                n = self.at(length) + int(0.01 * sr)
                f = float(_midi_hz(root + interval))
                note = _harmonic_tone(f, n, sr, amps)
                note *= _envelope(n, sr, 0.005, 0.35, 0.02)
                _add(out, self.at(bar * 16 + start), 0.5 * note)
        return out

    def other(self) -> np.ndarray:
        rng, sr = self.rng, self.sr
        out = np.zeros(self.n)
        pad = bool(rng.random() < 0.5)
        amps = [1.0, 0.45, 0.3, 0.12, 0.08] if pad else [1.0, 0.15, 0.35, 0.05, 0.1]
        for bar in range(self.n_bars):
            degree, quality = self.chords[bar]
            notes = [55 + (self.key + degree + q - 55) % 12 for q in quality]  # G3..F#4
            hits = ((0, 16),) if pad else ((2, 2), (6, 2), (10, 2), (14, 2))
            for start, length in hits:
                n = self.at(length) + int(0.05 * sr)
                chord = np.zeros(n)
                for midi in notes:
                    chord += _harmonic_tone(float(_midi_hz(midi)), n, sr, amps, rng.uniform(0, 6))
                env = (
                    _envelope(n, sr, 0.08, 2.0, 0.05) if pad else _envelope(n, sr, 0.004, 0.2, 0.03)
                )
                _add(out, self.at(bar * 16 + start), 0.18 * chord * env)
        return out

    def vocals(self) -> np.ndarray:
        rng, sr = self.rng, self.sr
        out = np.zeros(self.n)
        rate, depth = rng.uniform(4.8, 6.5), rng.uniform(0.2, 0.45)  # vibrato Hz, semitones
        scale = [60 + self.key % 12 + d + 12 * o for o in (0, 1, 2) for d in _MAJOR_SCALE]
        scale = [m for m in scale if 63 <= m <= 81]  # D#4..A5, above the chords
        idx = len(scale) // 2
        step = float(rng.integers(0, 4))  # the first phrase starts within the first beat
        durations = np.array([2, 2, 4, 4, 6, 8])
        while step < self.n_steps:
            phrase_end = step + 16 * int(rng.integers(1, 3))
            while step < phrase_end and step < self.n_steps:
                length = float(durations[rng.integers(len(durations))])
                # melody: small steps in the scale, pulled towards chord tones on strong beats
                idx = int(np.clip(idx + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(scale) - 1))
                degree, quality = self.chords[min(int(step) // 16, self.n_bars - 1)]
                chord_pcs = {(self.key + degree + q) % 12 for q in quality}
                if int(step) % 4 == 0 and scale[idx] % 12 not in chord_pcs:
                    idx = min(idx + 1, len(scale) - 1)
                n = self.at(length)
                t = np.arange(n) / sr
                vib = depth * np.sin(2 * np.pi * rate * t) * np.clip(t / 0.25, 0, 1)
                f0 = _midi_hz(scale[idx] + vib)
                phase = 2 * np.pi * np.cumsum(f0) / sr
                formants = _VOWELS[rng.integers(len(_VOWELS))]
                base = float(_midi_hz(scale[idx]))
                amps = []
                for k in range(1, int(7000 // base) + 1):
                    # vowel-like spectral envelope: resonances at the formants, a gentle tilt
                    gain = sum(
                        math.exp(-0.5 * ((k * base - fm) / (80 + 0.06 * fm)) ** 2)
                        for fm in formants
                    )
                    amps.append(0.15 / k + gain)
                tone = _harmonics(phase, amps[:16])
                tone *= _envelope(n, sr, 0.03, 1.5, 0.06)
                _add(out, self.at(step), 0.12 * tone)
                step += length
                if rng.random() < 0.12:
                    step += 2  # a short breath inside the phrase
            step += float(rng.choice([4, 6, 8]))  # rest between phrases: one to two beats
        return out


def _pan(mono: np.ndarray, pan: float) -> np.ndarray:
    """Constant-power pan of a [T] signal to [2, T]; pan in [-1, 1] (left to right)."""
    angle = (pan + 1) * np.pi / 4
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)])


def render_song(
    rng: np.random.Generator, seconds: float, sample_rate: int
) -> dict[str, np.ndarray]:
    """Compose and render one song: int16 stems ``{part: [2, T]}`` whose sum fits in int16."""
    song = _Song(rng, seconds, sample_rate)
    kick, snare, hats = song.drums()
    width = rng.uniform(0.2, 0.6)
    parts = {
        "drums": _pan(kick, 0.0) + _pan(snare, rng.uniform(-0.15, 0.15)) + _pan(hats, width),
        "bass": _pan(song.bass(), rng.uniform(-0.1, 0.1)),
        "other": _pan(song.other(), rng.uniform(-0.5, 0.5)),
        "vocals": _pan(song.vocals(), rng.uniform(-0.15, 0.15)),
    }
    for name, audio in parts.items():
        # normalise each part to a random level around its usual place in a mix
        nominal = {"drums": -14.0, "bass": -16.0, "other": -19.0, "vocals": -15.0}[name]
        rms = np.sqrt(np.mean(audio**2)) + 1e-12
        parts[name] = audio * 10 ** ((nominal + rng.uniform(-3, 3)) / 20) / rms
    mix = sum(parts.values())
    peak = max(np.abs(mix).max(), *(np.abs(a).max() for a in parts.values()))
    # headroom: the mixture of the rounded stems must fit in int16 too
    scale = min(1.0, 0.9 / peak) * 32767
    return {name: np.round(a * scale).astype(np.int16) for name, a in parts.items()}


def _check_sources(sources: Sequence[str]) -> list[str]:
    sources = list(sources)
    covered = [p for s in sources for p in GROUPS.get(s, (s,))]
    unknown = [s for s in sources if s not in PARTS and s not in GROUPS]
    if unknown or sorted(covered) != sorted(PARTS):
        raise ValueError(
            f"toy sources must split {list(PARTS)} into disjoint groups (known groups: "
            f"{GROUPS}); got {sources}"
        )
    return sources


def _manifest(n_train, n_test, seconds, sample_rate, seed, sources) -> dict:
    return {
        "generator": "mss.data.toy",
        "version": GENERATOR_VERSION,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seconds": float(seconds),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "sources": list(sources),
    }


def make_toy_dataset(
    root: str | os.PathLike,
    n_train: int = 8,
    n_test: int = 3,
    seconds: float = 16.0,
    sample_rate: int = 44100,
    seed: int = 0,
    sources: Sequence[str] = PARTS,
) -> Path:
    """Render the toy set into ``root`` (created; existing files are overwritten) and return it.

    Each song's randomness comes from ``(seed, subset, index)`` alone, so a song does not change
    when ``n_train`` or ``n_test`` do. ``sources`` names the stem files to write: the four parts
    or groups of them (``["vocals", "accompaniment"]``); they must cover every part exactly once
    so that ``mixture == sum(stems)``.
    """
    sources = _check_sources(sources)
    root = Path(root)
    for subset, count in (("train", n_train), ("test", n_test)):
        for index, name in enumerate(track_names(subset, count)):
            rng = np.random.default_rng([int(seed), _SUBSET_KEYS[subset], index])
            parts = render_song(rng, seconds, sample_rate)
            folder = root / subset / name
            folder.mkdir(parents=True, exist_ok=True)
            stems = {
                s: sum(parts[p].astype(np.int32) for p in GROUPS.get(s, (s,))) for s in sources
            }
            stems["mixture"] = sum(parts[p].astype(np.int32) for p in PARTS)
            for stem, audio in stems.items():
                sf.write(folder / f"{stem}.wav", audio.T.astype(np.int16), sample_rate, "PCM_16")
    manifest = _manifest(n_train, n_test, seconds, sample_rate, seed, sources)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def ensure_toy_dataset(
    root: str | os.PathLike,
    n_train: int = 8,
    n_test: int = 3,
    seconds: float = 16.0,
    sample_rate: int = 44100,
    seed: int = 0,
    sources: Sequence[str] = PARTS,
) -> Path:
    """Return ``root`` holding the toy set for these parameters, generating it if needed.

    Reuses ``root`` when its manifest matches. Otherwise renders into a hidden temporary folder
    beside ``root`` and renames it into place, so an interrupted run never leaves a half-written
    dataset and concurrent callers cannot see one. A previous toy set with other parameters is
    replaced; a non-empty folder that is not a toy set is never touched (``DatasetError``).
    """
    root = Path(root)
    sources = _check_sources(sources)
    wanted = _manifest(n_train, n_test, seconds, sample_rate, seed, sources)
    if _read_manifest(root) == wanted:
        return root
    if root.exists() and _read_manifest(root) is None and any(root.iterdir()):
        raise DatasetError(
            f"{root} exists and is not a generated toy dataset (no {MANIFEST}); "
            "refusing to overwrite it: pick another data.root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        make_toy_dataset(tmp, n_train, n_test, seconds, sample_rate, seed, sources)
        if root.exists():
            if _read_manifest(root) == wanted:  # another process finished first
                return root
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if _read_manifest(root) != wanted:  # lost a race against a writer of other parameters
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

"""Peak memory and speed of separating song files, file to file (the `separate.py` path).

Where ``bench_separate_memory.py`` measures the streaming engine alone on generated blocks, this
measures what a user runs: ``mss.Separator(model, segment, overlap, device="cpu")
.separate_file(song, out_dir, format="wav")``, i.e. probing and decoding the file block by block,
resampling to the model's rate and back, the chunked overlap-add, and writing four float32 WAV
stems atomically.

Inputs are generated block by block (never held whole) and cached in ``--cache``: stereo
music-like audio (a kick and a hi-hat on a 120 BPM grid, a bass line, a sustained chord and a
vibrato lead, each with its own envelope and pan, over a little noise), written as

    wav:M      44.1 kHz 16-bit WAV of M minutes
    mp3:M      44.1 kHz MP3 (libsndfile's LAME encoder), exercises the MP3 decoder
    flac48:M   48 kHz 16-bit FLAC, exercises the FLAC decoder and both resamplers

Each model (``conf/model/<name>.yaml`` with random weights, as in ``bench_model_speed.py``;
``passthrough`` is no network at all: each stem is a quarter of the mix, so its time is the file
path's own cost) separates each input in a fresh process on ``--threads`` threads. Recorded:
the peak RSS (``ru_maxrss``), the baseline RSS after imports, model build and `Separator`
construction (before the song), the RSS every 10% of the song (from the progress callback), wall
and CPU time, the wall and CPU time spent inside the model's forward, and the load average.
Every output stem is checked to have the input's sample rate and exact length (frames), then
deleted.

    python benchmarks/bench_separate_files.py --models simple_demucs unet hdemucs \\
        --inputs wav:1 wav:10 --jsonl /tmp/mss_bench_files/results.jsonl
    python benchmarks/bench_separate_files.py --table /tmp/mss_bench_files/results.jsonl

Results are appended to ``--jsonl`` one line per run (partial sweeps survive), and
``--table`` prints the markdown table of such a file, each peak next to the same model's
``wav:1`` peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_model_speed import SAMPLE_RATE, SOURCES, build
from bench_separate_memory import MODELS, _current_rss_mb, _in_child, _peak_rss_mb

KINDS = {  # kind: (sample rate, soundfile format, subtype, extension)
    "wav": (44100, "WAV", "PCM_16", ".wav"),
    "mp3": (44100, "MP3", "MPEG_LAYER_III", ".mp3"),
    "flac48": (48000, "FLAC", "PCM_16", ".flac"),
}
BLOCK_SECONDS = 10
BEAT = 0.5  # seconds: 120 BPM


# ------------------------------------------------------------------------------ the inputs


def _voice(t: np.ndarray, length: float, freqs: np.ndarray, decay: float, attack: float):
    """A note every `length` s (pitch from `freqs`, cycled) with an attack ramp and a decay."""
    index = np.floor(t / length).astype(np.int64)
    local = t - index * length
    envelope = np.minimum(local / attack, 1.0) * np.exp(-local / decay)
    return envelope, 2 * np.pi * freqs[index % len(freqs)] * local


def music_block(start: int, frames: int, rate: int, seed: int = 0) -> np.ndarray:
    """Frames `[start, start + frames)` of the benchmark song, float32 `[2, frames]`.

    A pure function of the frame range (the noise is seeded by `start`), so the song can be
    made in blocks of any size and is the same at every run.
    """
    table = np.random.default_rng(seed)
    bass_notes = 41.2 * 2 ** (table.choice([0, 3, 5, 7, 10, 12], 64) / 12)  # E1 minor-ish
    lead_notes = 329.6 * 2 ** (table.choice([0, 2, 3, 5, 7, 10, 12, 15], 256) / 12)
    chord_roots = 164.8 * 2 ** (table.choice([0, 3, 5, 7, 8, 10], 32) / 12)
    noise = np.random.default_rng([seed, start]).standard_normal((3, frames))

    t = (start + np.arange(frames)) / rate
    stereo = np.zeros((2, frames))

    def add(signal: np.ndarray, pan: float) -> None:  # pan in [-1, 1], constant power
        angle = (pan + 1) * np.pi / 4
        stereo[0] += np.cos(angle) * signal
        stereo[1] += np.sin(angle) * signal

    # kick: a 110 -> 45 Hz sweep on every beat
    env, _ = _voice(t, BEAT, np.ones(1), 0.08, 0.002)
    local = t % BEAT
    add(0.5 * env * np.sin(2 * np.pi * (45 * local + 65 * 0.03 * (1 - np.exp(-local / 0.03)))), 0)
    # hi-hat: high-passed noise on every half beat
    env, _ = _voice(t, BEAT / 2, np.ones(1), 0.025, 0.001)
    add(0.05 * env * np.diff(noise[0], prepend=0.0), 0.3)
    # bass: a saw-like note (3 harmonics) every 2 beats
    env, phase = _voice(t, 2 * BEAT, bass_notes, 0.6, 0.01)
    add(0.3 * env * (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.33 * np.sin(3 * phase)), -0.1)
    # chord: root, minor third, fifth, sustained over 8 beats
    env, phase = _voice(t, 8 * BEAT, chord_roots, 6.0, 0.3)
    chord = sum(np.sin(phase * 2 ** (k / 12)) for k in (0, 3, 7))
    add(0.08 * env * chord, -0.5)
    # lead: a vibrato tone every beat
    env, phase = _voice(t, BEAT, lead_notes, 0.35, 0.02)
    add(0.15 * env * np.sin(phase + 0.3 * np.sin(2 * np.pi * 5 * t)), 0.5)
    # a little noise
    stereo += 0.003 * noise[1:]
    return (0.8 * stereo).astype(np.float32)  # peaks at about 0.65, RMS about -19 dBFS


def input_file(cache: Path, spec: str) -> Path:
    """The cached input for `kind:minutes`, made block by block if it is not there yet."""
    import soundfile as sf

    kind, minutes = spec.split(":")
    rate, fmt, subtype, ext = KINDS[kind]
    path = cache / f"song_{kind}_{float(minutes):g}min{ext}"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    total, block = round(float(minutes) * 60 * rate), BLOCK_SECONDS * rate
    start_time = time.perf_counter()
    peak = 0.0
    with tempfile.NamedTemporaryFile(dir=cache, suffix=ext, delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        with sf.SoundFile(partial, "w", rate, 2, subtype, format=fmt) as out:
            for start in range(0, total, block):
                samples = music_block(start, min(block, total - start), rate)
                peak = max(peak, float(np.abs(samples).max()))
                if peak >= 1:
                    raise RuntimeError(f"{path}: the generated song clips ({peak:.2f})")
                out.write(samples.T)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    print(
        f"# made {path} ({path.stat().st_size / 2**20:.0f} MB, sample peak {peak:.2f}) in "
        f"{time.perf_counter() - start_time:.0f} s",
        flush=True,
    )
    return path


# ---------------------------------------------------------------------------- the models


class Passthrough(torch.nn.Module):
    """No network: every stem is a quarter of the mix (the file path's own cost)."""

    sources = SOURCES
    sample_rate = SAMPLE_RATE
    audio_channels = 2
    trainable = False

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return (0.25 * mix).unsqueeze(1).repeat(1, len(SOURCES), 1, 1)


def _timed_forward(model: torch.nn.Module) -> dict[str, float]:
    """Hooks that add up the wall and CPU seconds spent in `model`'s forward."""
    spent = {"wall": 0.0, "cpu": 0.0, "calls": 0}
    started = {}

    def before(module, args):
        started["wall"], started["cpu"] = time.perf_counter(), time.process_time()

    def after(module, args, output):
        spent["wall"] += time.perf_counter() - started["wall"]
        spent["cpu"] += time.process_time() - started["cpu"]
        spent["calls"] += 1

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)
    return spent


def separate_once(
    name: str, song: str, segment: float, overlap: float, threads: int, out_root: str
) -> dict:
    """Run in a child process: separate `song` file to file with `name`; the numbers."""
    torch.set_num_threads(threads)
    import soundfile as sf

    from mss import Separator

    torch.manual_seed(0)
    model = Passthrough() if name == "passthrough" else build(name)
    separator = Separator(model, segment=segment, overlap=overlap, device="cpu")
    forward = _timed_forward(separator.model)
    baseline = _current_rss_mb()
    info = sf.info(song)
    trace: list[tuple[float, float]] = []  # (fraction of the song read, current RSS MB)

    def progress(done: float, total: float | None) -> None:
        fraction = done / total if total else 0.0
        if not trace or fraction >= trace[-1][0] + 0.1 or fraction >= 1.0:
            trace.append((round(fraction, 3), round(_current_rss_mb(), 1)))

    out_dir = Path(tempfile.mkdtemp(prefix=f"{name}_", dir=out_root))
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    result = separator.separate_file(song, out_dir, format="wav", progress=progress)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _peak_rss_mb()
    end_rss = _current_rss_mb()
    try:
        lengths = {}
        for stem, path in result.stems.items():
            out = sf.info(str(path))
            lengths[stem] = out.frames
            assert out.samplerate == info.samplerate and out.channels == info.channels, out
        read = round(result.duration * info.samplerate)
        assert set(lengths.values()) == {info.frames} == {read}, (lengths, info.frames, read)
    finally:
        shutil.rmtree(out_dir)
    seconds = info.frames / info.samplerate
    return {
        "model": name,
        "input": Path(song).name,
        "format": info.format,
        "sample_rate": info.samplerate,
        "frames": info.frames,
        "minutes": seconds / 60,
        "threads": threads,
        "segment": segment,
        "overlap": overlap,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "end_rss_mb": end_rss,
        "rss_trace_mb": trace,
        "wall_s": wall,
        "cpu_s": cpu,
        "rtf": wall / seconds,
        "cpu_rtf": cpu / seconds,
        "model_wall_s": forward["wall"],
        "model_cpu_s": forward["cpu"],
        "model_calls": forward["calls"],
        "load_avg_1min_start": load,
        "load_avg_1min_end": os.getloadavg()[0],
        "stem_frames_ok": True,
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }


# ------------------------------------------------------------------------------- the table

HEADER = (
    "| model | input | minutes | peak RSS (MB) | baseline (MB) | growth (MB) | ratio to 1 min "
    "| RTF (wall) | CPU s per audio s | model share of CPU | load |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _input_label(r: dict) -> str:
    kind = {"WAV": "WAV", "MP3": "MP3", "FLAC": "FLAC"}.get(r["format"], r["format"])
    return f"{kind} {r['sample_rate'] / 1000:g} kHz"


def row(r: dict, reference: float | None) -> str:
    ratio = f"{r['peak_rss_mb'] / reference:.3f}" if reference else "-"
    share = r["model_cpu_s"] / r["cpu_s"] if r["cpu_s"] else float("nan")
    load = f"{r['load_avg_1min_start']:.1f}-{r['load_avg_1min_end']:.1f}"
    return (
        f"| {r['model']} | {_input_label(r)} | {r['minutes']:g} | {r['peak_rss_mb']:.0f} | "
        f"{r['baseline_rss_mb']:.0f} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | {ratio} | "
        f"{r['rtf']:.3f} | {r['cpu_rtf']:.3f} | {share:.0%} | {load} |"
    )


def table(results: list[dict]) -> str:
    """Markdown rows in model order, each peak over the model's 1-minute 44.1 kHz WAV peak."""
    reference = {
        r["model"]: r["peak_rss_mb"]
        for r in results
        if r["format"] == "WAV" and r["sample_rate"] == SAMPLE_RATE and round(r["minutes"]) == 1
    }
    order = {name: i for i, name in enumerate([*MODELS, "passthrough"])}
    results = sorted(
        results,
        key=lambda r: (order.get(r["model"], 99), r["format"] != "WAV", r["minutes"], r["input"]),
    )
    return "\n".join([HEADER, *(row(r, reference.get(r["model"])) for r in results)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--inputs", nargs="+", default=["wav:1", "wav:10"], help="kind:minutes")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mss_bench")
    parser.add_argument("--segment", type=float, default=10.0)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jsonl", type=Path, help="append one JSON line per run")
    parser.add_argument("--table", type=Path, help="print the table of a --jsonl file and stop")
    args = parser.parse_args()

    if args.table:
        lines = args.table.read_text().splitlines()
        print(table([json.loads(line) for line in lines if line.strip()]))
        return
    for spec in args.inputs:
        if spec.split(":")[0] not in KINDS:
            parser.error(f"--inputs {spec}: kind must be one of {sorted(KINDS)}")
    songs = [input_file(args.cache, spec) for spec in args.inputs]
    out_root = args.cache / "out"
    out_root.mkdir(parents=True, exist_ok=True)
    print(
        f"# torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores; segment {args.segment:g} s, overlap {args.overlap:g}, "
        "float32 WAV stems\n"
    )
    print(HEADER, flush=True)
    results = []
    for name in args.models:
        for song in songs:
            r = _in_child(
                separate_once,
                name,
                str(song),
                args.segment,
                args.overlap,
                args.threads,
                str(out_root),
            )
            results.append(r)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            reference = next(
                (
                    x["peak_rss_mb"]
                    for x in results
                    if x["model"] == name and x["format"] == "WAV" and round(x["minutes"]) == 1
                ),
                None,
            )
            print(row(r, reference), flush=True)


if __name__ == "__main__":
    main()

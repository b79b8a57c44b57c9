"""mss.io.write: every format and bit depth, clipping that is counted, atomic files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mss.errors import AudioFileError, ConfigError
from mss.io.read import probe, read_audio
from mss.io.write import OutputFormat, StemSetWriter, StemWriter, check_output_folder


def stem(channels: int = 2, frames: int = 30000, peak: float = 0.8, seed: int = 0) -> np.ndarray:
    """Float32 ``[C, T]`` test stem: sines and noise scaled to ``peak``."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 44100
    audio = np.stack(
        [
            np.sin(2 * np.pi * (300 + 50 * c) * t) + 0.3 * rng.standard_normal(frames)
            for c in range(channels)
        ]
    )
    return (audio * peak / np.abs(audio).max()).astype(np.float32)


def write_in_blocks(path, audio, fmt=None, sample_rate=44100, block=4096):
    with StemWriter(path, sample_rate, audio.shape[0], fmt) as writer:
        for start in range(0, audio.shape[1], block):
            writer.write(audio[:, start : start + block])
    return writer.report


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- formats ----------------------------------------------------------------------------------


def test_output_format_defaults_and_bad_combinations():
    assert OutputFormat() == OutputFormat("wav", 32, "clamp")
    assert OutputFormat("flac").bit_depth == 24
    assert OutputFormat("mp3", bit_depth=16).bit_depth is None  # does not apply to mp3
    assert OutputFormat("WAV", 16).format == "wav"
    with pytest.raises(
        ConfigError, match=r"bit_depth=32 with format=flac: choose one of 16, 24 .*float"
    ):
        OutputFormat("flac", 32)
    with pytest.raises(ConfigError, match=r"bit_depth=8 with format=wav: choose one of 16, 24, 32"):
        OutputFormat("wav", 8)
    with pytest.raises(ConfigError, match=r"format=ogg: choose one of wav, flac, mp3"):
        OutputFormat("ogg")
    with pytest.raises(ConfigError, match=r"clip=soft: choose one of clamp, rescale, none"):
        OutputFormat(clip="soft")


# (format, bit depth, soundfile subtype read back, max error of the round trip)
LOSSLESS = [
    ("wav", 32, "FLOAT", 0.0),
    ("wav", 24, "PCM_24", 2.0**-23),
    ("wav", 16, "PCM_16", 2.0**-15),
    ("flac", 24, "PCM_24", 2.0**-23),
    ("flac", 16, "PCM_16", 2.0**-15),
]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("fmt", "depth", "subtype", "step"), LOSSLESS)
def test_lossless_round_trip_within_one_quantisation_step(
    tmp_path, fmt, depth, subtype, step, channels
):
    audio = stem(channels, frames=30001)
    path = tmp_path / f"vocals.{fmt}"
    report = write_in_blocks(path, audio, OutputFormat(fmt, depth))
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate) == (fmt.upper(), subtype, 44100)
    back, rate = read_audio(path)
    assert back.shape == audio.shape and rate == 44100
    error = np.abs(back - audio).max()
    assert error <= step  # libsndfile scales by 2**15 - 1 writing and 2**15 reading
    if step:  # quantised for real: the test above is not vacuous
        assert error > step / 8
    assert (report.frames, report.clipped, report.over_full_scale, report.scale) == (
        30001,
        0,
        0,
        1.0,
    )
    assert report.peak == pytest.approx(0.8)
    assert listing(tmp_path) == [f"vocals.{fmt}"]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [44100, 22050, 48000])
def test_mp3_keeps_length_channels_and_timing(tmp_path, channels, rate):
    """libsndfile's LAME writes the encoder delay and padding into the LAME header, and
    decoders (mpg123 here; ffmpeg too, see test_io_read) cut them: exact length, no delay."""
    frames = 2 * rate + 321
    audio = stem(channels, frames)
    audio[:, 20000:20040] = 0.9
    path = tmp_path / "drums.mp3"
    write_in_blocks(path, audio, OutputFormat("mp3"), sample_rate=rate)
    info = probe(path)
    assert (info.frames, info.frames_exact, info.channels, info.sample_rate) == (
        frames,
        True,
        channels,
        rate,
    )
    back, _ = read_audio(path)
    assert back.shape == audio.shape
    ref = audio[0, 19500:20500]
    assert int(np.argmax(np.correlate(back[0, 19000:21000], ref, "valid"))) == 500  # no delay
    snr = 10 * np.log10(np.sum(audio**2) / np.sum((back - audio) ** 2))
    assert snr > 15
    # The highest constant bit rate of the MPEG version: 320 kbit/s (MPEG-1), 160 (MPEG-2);
    # the headers add a few percent on 2 s.
    kbps = path.stat().st_size * 8 / (frames / rate) / 1000
    assert 1.0 < kbps / (320 if rate >= 32000 else 160) < 1.1


def test_mp3_refuses_rates_it_cannot_store_before_writing(tmp_path):
    with pytest.raises(ConfigError, match=r"format=mp3 cannot store 96000 Hz .*format=wav"):
        StemWriter(tmp_path / "out" / "bass.mp3", 96000, 2, OutputFormat("mp3"))
    assert not (tmp_path / "out").exists()  # refused before touching the disk
    with pytest.raises(ConfigError, match="1 or 2 channels"):
        StemWriter(tmp_path / "bass.mp3", 44100, 4, OutputFormat("mp3"))
    with pytest.raises(ValueError, match=r"should end in \.flac"):
        StemWriter(tmp_path / "bass.wav", 44100, 2, OutputFormat("flac"))


# --- clipping ---------------------------------------------------------------------------------


def loud(channels: int = 2, frames: int = 20000) -> np.ndarray:
    """A stem that goes beyond full scale (peak 1.7) in a known number of samples."""
    return stem(channels, frames, peak=1.7, seed=3)


def test_float_wav_is_written_as_it_is_whatever_clip_says(tmp_path):
    audio = loud()
    over = int(np.count_nonzero(np.abs(audio) > 1))
    assert over > 100
    for clip in ("clamp", "rescale", "none"):
        path = tmp_path / f"{clip}.wav"
        report = write_in_blocks(path, audio, OutputFormat("wav", 32, clip))
        np.testing.assert_array_equal(read_audio(path)[0], audio)
        assert (report.over_full_scale, report.clipped, report.scale) == (over, 0, 1.0)
        assert report.peak == pytest.approx(1.7)


@pytest.mark.parametrize(("fmt", "depth"), [("wav", 16), ("wav", 24), ("flac", 16), ("mp3", None)])
def test_clamp_counts_what_it_clips(tmp_path, fmt, depth):
    audio = loud()
    path = tmp_path / f"other.{fmt}"
    report = write_in_blocks(path, audio, OutputFormat(fmt, depth, "clamp"), block=999)
    expected = int(np.count_nonzero(np.abs(audio) > 1.0))
    assert report.clipped == report.over_full_scale == expected > 100
    back, _ = read_audio(path)
    if fmt != "mp3":
        np.testing.assert_allclose(back, np.clip(audio, -1, 1), rtol=0, atol=2.0**-15)
    else:  # lossy: clamped before encoding, so far below the 1.7 peak after decoding
        assert np.abs(back).max() < 1.3


@pytest.mark.parametrize(("fmt", "depth"), [("wav", 24), ("flac", 16), ("mp3", None)])
def test_none_still_counts_samples_beyond_full_scale(tmp_path, fmt, depth):
    audio = loud()
    path = tmp_path / f"other.{fmt}"
    report = write_in_blocks(path, audio, OutputFormat(fmt, depth, "none"))
    assert report.clipped == report.over_full_scale == int(np.count_nonzero(np.abs(audio) > 1.0))
    back, _ = read_audio(path)
    if fmt == "mp3":  # encoded as it is: decoded float samples go beyond full scale
        assert np.abs(back).max() > 1.3
    else:  # integer PCM saturates them (libsndfile)
        assert np.abs(back).max() <= 1.0


@pytest.mark.parametrize(
    ("fmt", "depth", "step"), [("wav", 24, 2.0**-23), ("wav", 16, 2.0**-15), ("flac", 24, 2.0**-23)]
)
def test_rescale_puts_the_peak_at_full_scale(tmp_path, fmt, depth, step):
    audio = loud(frames=50000)
    peak = float(np.abs(audio).max())
    path = tmp_path / f"bass.{fmt}"
    report = write_in_blocks(path, audio, OutputFormat(fmt, depth, "rescale"), block=3000)
    assert report.scale == pytest.approx(1 / peak) and report.peak == peak
    assert report.clipped == 0 and report.over_full_scale > 100
    back, _ = read_audio(path)
    assert back.shape == audio.shape
    assert np.abs(back).max() <= 1.0
    np.testing.assert_allclose(back, audio / np.float32(peak), rtol=0, atol=step)
    assert listing(tmp_path) == [f"bass.{fmt}"]  # the float temporary is gone


def test_rescale_division_never_exceeds_full_scale():
    """The rescale pass divides by the peak: correctly rounded division keeps every sample
    within [-1, 1] and the peak exactly at 1 (multiplying by 1 / peak would not promise it)."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        x = (rng.standard_normal(10000) * rng.uniform(0.5, 50)).astype(np.float32)
        peak = np.float32(np.abs(x).max())
        scaled = x / peak
        assert np.abs(scaled).max() == 1.0


def test_rescale_leaves_quiet_stems_alone(tmp_path):
    audio = stem(peak=0.5)
    report = write_in_blocks(tmp_path / "quiet.wav", audio, OutputFormat("wav", 24, "rescale"))
    assert report.scale == 1.0 and report.over_full_scale == 0
    np.testing.assert_allclose(read_audio(tmp_path / "quiet.wav")[0], audio, rtol=0, atol=2.0**-23)


def test_non_finite_stem_is_refused_with_its_time(tmp_path):
    audio = stem(frames=44100)
    audio[1, 22050] = np.nan
    with pytest.raises(
        ValueError,
        match=r"song\.wav: cannot write a non-finite sample \(NaN/Inf\) at 0\.500 s \(frame 22050",
    ):
        write_in_blocks(tmp_path / "song.wav", audio, block=10000)
    assert listing(tmp_path) == []


# --- atomicity --------------------------------------------------------------------------------


def test_nothing_under_the_final_name_until_commit(tmp_path):
    path = tmp_path / "vocals.flac"
    writer = StemWriter(path, 44100, 2, OutputFormat("flac"))
    writer.write(stem())
    names = listing(tmp_path)
    assert len(names) == 1 and names[0].startswith(".vocals.flac.") and names[0].endswith(".tmp")
    assert not path.exists()
    report = writer.commit()
    assert listing(tmp_path) == ["vocals.flac"] and report.path == path


@pytest.mark.parametrize("clip", ["clamp", "rescale"])
def test_exception_midway_leaves_no_file_and_keeps_the_old_one(tmp_path, clip):
    path = tmp_path / "drums.wav"
    old = stem(frames=100)
    sf.write(str(path), old.T, 44100, subtype="PCM_16")
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with StemWriter(path, 44100, 2, OutputFormat("wav", 16, clip)) as writer:
            writer.write(loud())
            assert len(listing(tmp_path)) == 2 + (clip == "rescale")  # old file + temporaries
            raise KeyboardInterrupt  # Ctrl-C in the middle of a song
    assert listing(tmp_path) == ["drums.wav"]
    assert path.read_bytes() == before


def test_abort_removes_everything_and_is_idempotent(tmp_path):
    writer = StemWriter(tmp_path / "x.wav", 44100, 1, OutputFormat("wav", 24, "rescale"))
    writer.write(loud(channels=1))
    writer.abort()
    writer.abort()
    assert listing(tmp_path) == []
    with pytest.raises(RuntimeError, match="write after aborted"):
        writer.write(loud(channels=1))
    with pytest.raises(RuntimeError, match="commit after aborted"):
        writer.commit()


def test_a_killed_process_leaves_nothing_under_the_final_name(tmp_path):
    """SIGKILL in the middle of writing (no Python cleanup runs): the final name never appears;
    only a hidden temporary can remain."""
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from mss.io.write import StemWriter
        with StemWriter({str(tmp_path / "vocals.wav")!r}, 44100, 2) as writer:
            writer.write(np.zeros((2, 44100), np.float32))
            print("written", flush=True)
            sys.stdin.readline()  # wait to be killed
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout.readline().strip() == "written"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    names = listing(tmp_path)
    assert "vocals.wav" not in names
    assert len(names) == 1 and names[0].startswith(".vocals.wav.")


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
@pytest.mark.parametrize(("fmt", "depth", "clip"), [("wav", 32, "clamp"), ("flac", 16, "rescale")])
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, fmt, depth, clip):
    """A file size limit (RLIMIT_FSIZE, in a child process) stands in for a full disk."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        import numpy as np
        from mss.io.write import OutputFormat, StemWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        fmt = OutputFormat({fmt!r}, {depth}, {clip!r})
        try:
            with StemWriter({str(tmp_path / f"bass.{fmt}")!r}, 44100, 2, fmt) as writer:
                for i in range(10):
                    writer.write(np.random.default_rng(i).uniform(-1, 1, (2, 44100)))
        except Exception as err:
            print(type(err).__name__, err)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert result.stdout.startswith(f"AudioFileError {tmp_path / f'bass.{fmt}'}: writing failed (")
    assert result.stdout.count("\n") == 1
    assert listing(tmp_path) == []


def test_stem_set_is_written_all_or_nothing(tmp_path):
    names = ["drums", "bass", "other", "vocals"]
    paths = [tmp_path / "song" / f"{name}.wav" for name in names]
    stems = np.stack([stem(seed=i) for i in range(4)])  # [S, C, T]
    with StemSetWriter(paths, 44100, 2, OutputFormat("wav", 16)) as writer:
        for start in range(0, stems.shape[-1], 7000):
            writer.write(stems[..., start : start + 7000])
        assert not any(p.exists() for p in paths)
    reports = writer.reports
    assert listing(tmp_path / "song") == sorted(f"{n}.wav" for n in names)
    for path, report, expected in zip(paths, reports, stems, strict=True):
        assert report.path == path and report.frames == stems.shape[-1]
        np.testing.assert_allclose(read_audio(path)[0], expected, rtol=0, atol=2.0**-15)

    # A failure in any stem drops them all.
    bad = stems.copy()
    bad[2, 0, 100] = np.inf
    others = [tmp_path / "other_song" / f"{name}.wav" for name in names]
    with pytest.raises(ValueError, match="non-finite"):
        with StemSetWriter(others, 44100, 2) as writer:
            writer.write(stems[..., :5000])
            writer.write(bad[..., 5000:])
            writer.write(bad[..., :5000])
    assert listing(tmp_path / "other_song") == []
    with pytest.raises(ValueError, match=r"\(4 stems, channels, frames\)"):
        with StemSetWriter(others, 44100, 2) as writer:
            writer.write(stems[0])
    assert listing(tmp_path / "other_song") == []


# --- output folders ---------------------------------------------------------------------------


def test_unwritable_folder_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(
        AudioFileError, match=r"file/sub: cannot write to this output folder \("
    ) as err:
        StemWriter(blocker / "sub" / "vocals.wav", 44100, 2)
    assert "\n" not in str(err.value)
    with pytest.raises(AudioFileError, match=r"file: cannot write to this output folder"):
        check_output_folder(blocker)
    assert check_output_folder(tmp_path / "new" / "folder").is_dir()
    assert listing(tmp_path / "new" / "folder") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(
            AudioFileError, match=r"ro: cannot write to this output folder \(Permission denied\)"
        ):
            StemWriter(folder / "vocals.wav", 44100, 2)
    finally:
        folder.chmod(0o700)

"""mss.io.read: every format in blocks with its exact length, and one clear line per bad file."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mss.errors import AudioFileError
from mss.io.read import probe, read_audio, read_blocks

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed (scripts/install.sh installs them)",
)


def signal(frames: int, channels: int = 2, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Band-limited test signal float32 ``[C, T]``: two sines per channel plus quiet noise."""
    t = np.arange(frames) / sample_rate
    rng = np.random.default_rng(seed)
    out = [
        0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t)
        + 0.2 * np.sin(2 * np.pi * 1375 * t + c)
        + 0.01 * rng.standard_normal(frames)
        for c in range(channels)
    ]
    return np.asarray(out, dtype=np.float32)


def write(path: Path, audio: np.ndarray, sample_rate: int = 44100, **kwargs) -> Path:
    sf.write(str(path), audio.T, sample_rate, **kwargs)
    return path


def lag(decoded: np.ndarray, original: np.ndarray, click: int, span: int = 500) -> int:
    """Delay of ``decoded`` against ``original`` (first channel) around the click at ``click``."""
    ref = original[0, click - span : click + span]
    corr = np.correlate(decoded[0, click - 2 * span : click + 2 * span], ref, "valid")
    return int(np.argmax(corr)) - span


# (extension, soundfile subtype, sample rate, lossless)
FORMATS = [
    ("wav", "PCM_16", 44100, True),
    ("wav", "FLOAT", 48000, True),
    ("flac", "PCM_24", 22050, True),
    ("ogg", "VORBIS", 44100, False),
    ("ogg", "OPUS", 48000, False),
    ("mp3", "MPEG_LAYER_III", 44100, False),
    ("mp3", "MPEG_LAYER_III", 22050, False),
]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("ext", "subtype", "rate", "lossless"), FORMATS)
def test_every_format_reads_in_blocks_with_its_length(
    tmp_path, ext, subtype, rate, lossless, channels
):
    frames = rate + 1237  # not a multiple of the block size
    audio = signal(frames, channels, rate)
    audio[:, 20000:20040] = 0.9  # a click to align on
    path = write(tmp_path / f"song.{ext}", audio, rate, subtype=subtype)

    info = probe(path)
    assert (info.sample_rate, info.channels, info.frames) == (rate, channels, frames)
    assert info.frames_exact and info.backend == "soundfile"
    assert info.duration == pytest.approx(frames / rate)
    blocks = list(read_blocks(path, block_frames=4096))
    assert [b.shape for b in blocks] == [(channels, 4096)] * (frames // 4096) + [
        (channels, frames % 4096)
    ]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in blocks)
    decoded = np.concatenate(blocks, axis=1)
    # The samples of one soundfile read of the whole file: the blocks lose nothing. (mpg123's
    # float output differs by rounding, 1.2e-7, with the size of the reads.)
    tolerance = {"rtol": 0, "atol": 0 if lossless else 3e-7}
    whole_read = sf.read(str(path), dtype="float32", always_2d=True)[0].T
    np.testing.assert_allclose(decoded, whole_read, **tolerance)
    whole, whole_rate = read_audio(path)
    np.testing.assert_allclose(whole, decoded, **tolerance)
    assert whole_rate == rate
    if lossless:
        np.testing.assert_allclose(decoded, audio, atol=2**-15)
    else:  # lossy, but in place: no delay, and close to the signal
        assert lag(decoded, audio, click=20000) == 0
        error = decoded - audio
        assert 10 * np.log10(np.sum(audio**2) / np.sum(error**2)) > 10


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("frames", [1000, 44100, 44101, 100003])
def test_mp3_written_by_libsndfile_decodes_to_its_exact_length(tmp_path, frames, channels):
    """libsndfile's LAME writes a Xing/LAME header (encoder delay and padding): mpg123 and
    ffmpeg both cut them, so the decoded mp3 has exactly the written length, in place."""
    audio = signal(frames, channels)
    click = frames // 2
    audio[:, click : click + 40] = 0.9  # a click to align on
    path = write(tmp_path / "song.mp3", audio, format="MP3")
    info = probe(path)
    assert info.frames == frames and info.frames_exact
    decoded, _ = read_audio(path)
    assert decoded.shape == (channels, frames)
    assert lag(decoded, audio, click, span=min(500, frames // 5)) == 0
    if shutil.which("ffmpeg"):
        raw = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-"],
            capture_output=True,
            check=True,
        ).stdout
        assert len(raw) // (4 * channels) == frames


@needs_ffmpeg
def test_mp3_without_length_header_reports_an_estimate(tmp_path):
    """Without a Xing header libsndfile guesses the length from the bit rate (frames_exact is
    False); read_blocks yields what the decoder produces, which is what a full read gives."""
    wav = write(tmp_path / "in.wav", signal(110250), subtype="PCM_16")
    path = tmp_path / "noxing.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(wav),
            "-c:a",
            "libmp3lame",
            "-write_xing",
            "0",
            str(path),
        ],
        check=True,
    )
    info = probe(path)
    assert not info.frames_exact
    decoded = np.concatenate(list(read_blocks(path, 4096, info)), axis=1)
    assert decoded.shape[1] == sf.read(str(path), always_2d=True)[0].shape[0]
    assert decoded.shape[1] != info.frames  # the estimate is off: the flag is needed
    # With the header (ffmpeg writes one by default) the count is exact.
    tagged = tmp_path / "xing.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(tagged)], check=True)
    assert probe(tagged).frames_exact and read_audio(tagged)[0].shape[1] == 110250


@needs_ffmpeg
@pytest.mark.parametrize("channels", [1, 2])
def test_m4a_is_decoded_by_ffmpeg(tmp_path, channels):
    frames = 3 * 44100 + 17
    audio = signal(frames, channels)
    audio[:, 5000:5040] = 0.9
    wav = write(tmp_path / "in.wav", audio, subtype="FLOAT")
    path = tmp_path / "song.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(path))  # libsndfile cannot: this is the fallback at work

    info = probe(path)
    assert (info.backend, info.codec, info.channels, info.sample_rate) == (
        "ffmpeg",
        "aac",
        channels,
        44100,
    )
    assert not info.frames_exact and abs(info.frames - frames) < 100
    blocks = list(read_blocks(path, block_frames=10000))
    assert all(b.shape[0] == channels and b.dtype == np.float32 for b in blocks)
    assert all(b.shape[1] == 10000 for b in blocks[:-1])
    decoded = np.concatenate(blocks, axis=1)
    # ffmpeg cuts the AAC priming but keeps the padding of the last AAC frame (ffmpeg 5.1).
    assert frames <= decoded.shape[1] < frames + 2048
    assert lag(decoded, audio, click=5000) == 0
    np.testing.assert_array_equal(read_audio(path)[0], decoded)


@needs_ffmpeg
def test_corrupt_m4a_fails_while_decoding(tmp_path):
    wav = write(tmp_path / "in.wav", signal(3 * 44100), subtype="PCM_16")
    path = tmp_path / "song.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = b"\xab" * 3000  # garbage inside the AAC stream
    path.write_bytes(bytes(data))
    blocks = read_blocks(path, 4096)  # the header is fine
    with pytest.raises(AudioFileError, match=r"song\.m4a: ffmpeg cannot decode it \(.*aac"):
        list(blocks)


def _ffmpeg_children() -> list[int]:
    """Process ids of ffmpeg processes whose parent is this process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
            if name == "ffmpeg" and int(rest.split()[1]) == os.getpid():
                found.append(int(entry.name))
    return found


@needs_ffmpeg
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_closing_early_kills_and_reaps_ffmpeg(tmp_path):
    wav = write(tmp_path / "in.wav", signal(5 * 44100), subtype="PCM_16")
    path = tmp_path / "song.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    assert _ffmpeg_children() == []
    with closing(read_blocks(path, block_frames=1024)) as blocks:
        next(blocks)
        assert len(_ffmpeg_children()) == 1  # decoding 5 s, stalled on the full pipe
    assert _ffmpeg_children() == []  # killed and reaped: no zombie either


def test_format_nothing_can_read_says_ffmpeg_is_missing(tmp_path, monkeypatch):
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no ffmpeg on PATH
    with pytest.raises(
        AudioFileError, match=r"song\.m4a: libsndfile cannot read it .*ffmpeg.*not installed"
    ):
        probe(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.wav", b"", r"empty\.wav: empty file \(0 bytes\)"),
        ("lyrics.mp3", b"la la la, not a song\n" * 200, r"lyrics\.mp3: not audio"),
        ("noise.flac", bytes(range(256)) * 40, r"noise\.flac: not audio"),
    ],
)
def test_bad_files_fail_with_one_line_naming_them(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioFileError, match=message) as err:
        read_blocks(path)  # fails at the call, not at the first next()
    assert "\n" not in str(err.value)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(AudioFileError, match=r"nothing\.wav: no such file"):
        probe(tmp_path / "nothing.wav")
    with pytest.raises(AudioFileError, match="not a file"):
        probe(tmp_path)


def test_header_without_frames_is_empty(tmp_path):
    path = write(tmp_path / "silence.wav", np.zeros((2, 0), np.float32), subtype="PCM_16")
    assert path.stat().st_size > 0
    with pytest.raises(AudioFileError, match=r"silence\.wav: no audio in it \(0 frames\)"):
        read_audio(path)


def test_more_than_two_channels_is_refused(tmp_path):
    path = write(tmp_path / "surround.wav", signal(1000, channels=6), subtype="PCM_16")
    with pytest.raises(AudioFileError, match=r"surround\.wav: 6 channels; only mono and stereo"):
        read_blocks(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("block_frames", [4096, 1 << 20])
def test_non_finite_sample_names_time_and_channel(tmp_path, bad, block_frames):
    audio = signal(44100)
    audio[1, 33075] = bad  # 0.75 s, second channel, in the 9th block of 4096
    audio[0, 40000] = np.nan  # a later one is not the one reported
    path = write(tmp_path / "broken.wav", audio, subtype="FLOAT")
    blocks = read_blocks(path, block_frames=block_frames)
    with pytest.raises(
        AudioFileError, match=r"broken\.wav: .* sample at 0\.750 s \(frame 33075, channel 2 of 2\)"
    ):
        list(blocks)


def test_huge_finite_samples_are_not_mistaken_for_overflow(tmp_path):
    """Float WAV may hold large finite values whose sum overflows; they are valid."""
    audio = np.full((2, 5000), 3e38, np.float32)
    path = write(tmp_path / "loud.wav", audio, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(path)[0], audio)


def test_truncated_mp3_is_reported(tmp_path):
    path = write(tmp_path / "cut.mp3", signal(88200), format="MP3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still says 88200 frames
    with pytest.raises(
        AudioFileError, match=r"cut\.mp3: decoded \d+ frames but its header says 88200"
    ):
        read_audio(path)


def test_corrupt_flac_is_reported(tmp_path):
    path = write(tmp_path / "bad.flac", signal(44100), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    with pytest.raises(AudioFileError, match=r"bad\.flac: "):
        read_audio(path)


def test_block_size_does_not_change_the_samples(tmp_path):
    path = write(tmp_path / "song.flac", signal(3001), subtype="PCM_16")
    with pytest.raises(ValueError, match="block_frames"):
        read_blocks(path, 0)
    reference = np.concatenate(list(read_blocks(path, 3001)), axis=1)
    for size in (1, 7, 977, 4096):
        np.testing.assert_array_equal(
            np.concatenate(list(read_blocks(path, size)), axis=1), reference
        )

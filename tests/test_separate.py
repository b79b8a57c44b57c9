"""Separating users' songs: the Python API, separate.py, formats, rates, mono, reruns, bad files."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

import mss
from mss.apply import separate
from mss.errors import AudioFileError, ConfigError
from mss.separator import Separator, stem_mix
from tests.test_checkpoint import TINY, simple_demucs_checkpoint
from tests.test_cli import one_error_line, run_entry_point

SOURCES = TINY["sources"]
RATE = 44100


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return simple_demucs_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def separator(ckpt):
    return Separator.from_checkpoint(ckpt, segment=0.5, overlap=0.25, device="cpu")


def song(seconds=1.3, channels=2, rate=RATE, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    audio = tone + 0.05 * rng.standard_normal((channels, t.size))
    return audio.astype(np.float32)


def write(path, audio, rate=RATE, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, rate, **kwargs)
    return path


def read(path):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio.T, rate


def test_streamed_file_equals_the_in_memory_separation(separator, tmp_path):
    """The target: streamed output equals `mss.apply.separate` (float WAV at the model rate)."""
    audio = song(2.7)
    path = write(tmp_path / "song.wav", audio, subtype="FLOAT")
    result = separator.separate_file(path, tmp_path / "out")
    expected = separate(separator.model, torch.from_numpy(audio), 0.5, 0.25, RATE).numpy()
    assert list(result.stems) == SOURCES
    for i, source in enumerate(SOURCES):
        stem, rate = read(tmp_path / "out" / "song" / f"{source}.wav")
        assert rate == RATE and stem.shape == audio.shape
        np.testing.assert_allclose(stem, expected[i], atol=1e-6)
    assert result.duration == pytest.approx(audio.shape[1] / RATE)
    assert result.seconds > 0 and result.peak_memory_mb > 0
    # the API in memory gives the same stems
    stems = separator.separate(audio, RATE)
    for i, source in enumerate(SOURCES):
        np.testing.assert_allclose(stems[source].numpy(), expected[i], atol=1e-6)


@pytest.mark.parametrize("rate", [48000, 22050])
def test_other_rates_come_back_at_their_rate_and_length(separator, tmp_path, rate):
    audio = song(1.1, rate=rate)
    path = write(tmp_path / f"song{rate}.flac", audio, rate)
    separator.separate_file(path, tmp_path / "out", format="flac")
    memory = separator.separate(read(path)[0], rate)
    for source in SOURCES:
        stem, stem_rate = read(tmp_path / "out" / f"song{rate}" / f"{source}.flac")
        assert stem_rate == rate and stem.shape == audio.shape
        # streamed and in-memory resampling agree; 24-bit FLAC quantises to 6e-8
        np.testing.assert_allclose(stem, memory[source].numpy(), atol=2e-5)


def test_mono_in_mono_out(separator, tmp_path):
    audio = song(1.0, channels=1)
    path = write(tmp_path / "mono.wav", audio, subtype="FLOAT")
    separator.separate_file(path, tmp_path / "out")
    stereo = separate(separator.model, torch.from_numpy(np.repeat(audio, 2, 0)), 0.5, 0.25, RATE)
    for i, source in enumerate(SOURCES):
        stem, _ = read(tmp_path / "out" / "mono" / f"{source}.wav")
        assert stem.shape == audio.shape
        np.testing.assert_allclose(stem[0], stereo[i].mean(0).numpy(), atol=1e-6)
    flat = separator.separate(audio[0], RATE)
    assert flat["vocals"].shape == (audio.shape[1],)


@pytest.mark.parametrize(
    "name, kwargs, subtype",
    [
        ("wav", {"bit_depth": 16}, "PCM_16"),
        ("wav", {"bit_depth": 24}, "PCM_24"),
        ("wav", {}, "FLOAT"),
        ("flac", {"bit_depth": 16}, "PCM_16"),
        ("mp3", {}, "MPEG_LAYER_III"),
    ],
)
def test_formats_and_bit_depths(separator, tmp_path, name, kwargs, subtype):
    audio = song(1.2)
    path = write(tmp_path / "in.wav", audio, subtype="FLOAT")
    separator.separate_file(path, tmp_path / "out", format=name, **kwargs)
    for source in SOURCES:
        info = sf.info(tmp_path / "out" / "in" / f"{source}.{name}")
        assert info.subtype == subtype and info.samplerate == RATE
        # stems keep the song's length exactly, mp3 included (its LAME header)
        assert sf.read(info.name)[0].shape[0] == audio.shape[1]


def test_two_stems_and_a_subset(separator, tmp_path):
    audio = song(1.0)
    path = write(tmp_path / "s.wav", audio, subtype="FLOAT")
    result = separator.separate_file(path, tmp_path / "two", two_stems="vocals")
    assert list(result.stems) == ["vocals", "no_vocals"]
    stems = separator.separate(audio, RATE)
    rest, _ = read(tmp_path / "two" / "s" / "no_vocals.wav")
    others = sum(stems[s].numpy() for s in SOURCES if s != "vocals")
    np.testing.assert_allclose(rest, others, atol=1e-5)
    result = separator.separate_file(path, tmp_path / "sub", sources=["vocals", "drums"])
    assert list(result.stems) == ["drums", "vocals"]  # the separator's order
    assert sorted(p.name for p in (tmp_path / "sub" / "s").iterdir()) == ["drums.wav", "vocals.wav"]
    with pytest.raises(ConfigError, match="two_stems=piano"):
        stem_mix(SOURCES, "piano")
    with pytest.raises(ConfigError, match=r"sources=\['guitar'\]"):
        stem_mix(SOURCES, subset=["guitar"])


def test_clipping_is_counted_or_rescaled(tmp_path):
    loud = LoudSeparator()
    separator = Separator(loud, segment=None, device="cpu")
    path = write(tmp_path / "l.wav", song(0.5), subtype="FLOAT")
    result = separator.separate_file(path, tmp_path / "c", format="wav", bit_depth=16)
    stem, _ = read(tmp_path / "c" / "l" / "a.wav")
    expected = int((np.abs(4 * song(0.5)) > 1).sum())
    assert result.clipped == {"a": expected} and expected > 0
    assert np.abs(stem).max() <= 1.0
    result = separator.separate_file(
        path, tmp_path / "r", format="wav", bit_depth=16, clip="rescale"
    )
    assert result.clipped == {} and result.reports[0].scale < 1
    float_result = separator.separate_file(path, tmp_path / "f")  # float WAV: as it is
    assert float_result.clipped == {}
    assert read(tmp_path / "f" / "l" / "a.wav")[0].max() > 1


class LoudSeparator(torch.nn.Module):
    """One source, four times the mix: beyond full scale for any loud song."""

    sources, sample_rate, audio_channels, trainable = ["a"], RATE, 2, False

    def forward(self, mix):
        return 4 * mix[:, None]


def test_reruns_skip_finished_songs_unless_overwrite(separator, tmp_path):
    path = write(tmp_path / "s.wav", song(0.6), subtype="FLOAT")
    first = separator.separate_file(path, tmp_path / "out")
    stamp = first.stems["drums"].stat().st_mtime_ns
    again = separator.separate_file(path, tmp_path / "out")
    assert again.skipped and first.stems["drums"].stat().st_mtime_ns == stamp
    first.stems["bass"].unlink()  # an unfinished song is redone
    assert not separator.separate_file(path, tmp_path / "out").skipped
    assert not separator.separate_file(path, tmp_path / "out", overwrite=True).skipped
    assert not [p for p in (tmp_path / "out" / "s").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not audio\n"), "can read"),
        (lambda p: write(p, np.zeros((6, 4410), np.float32), subtype="FLOAT"), "6 channels"),
    ],
)
def test_bad_songs_are_one_line_naming_the_file(separator, tmp_path, make, message):
    path = tmp_path / ("bad.mp3" if "channels" not in message else "bad.wav")
    make(path)
    with pytest.raises(AudioFileError, match=message) as error:
        separator.separate_file(path, tmp_path / "out")
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out" / "bad").exists() or not any((tmp_path / "out" / "bad").iterdir())


def test_a_nan_sample_is_named_with_its_time(separator, tmp_path):
    audio = song(1.0)
    audio[1, 22050] = np.nan
    path = write(tmp_path / "nan.wav", audio, subtype="FLOAT")
    with pytest.raises(
        AudioFileError, match=r"nan\.wav: NaN sample at 0\.500 s \(frame 22050, channel 2 of 2\)"
    ):
        separator.separate_file(path, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.wav"))  # no stem of a failed song


def test_the_api_from_the_package(ckpt):
    separator = mss.Separator.from_checkpoint(ckpt, device="cpu", segment=None)
    stems = separator.separate(torch.from_numpy(song(0.3)), RATE)
    assert set(stems) == set(SOURCES) and stems["bass"].shape == (2, int(0.3 * RATE))
    with pytest.raises(ConfigError, match="Expected a waveform"):
        separator.separate(np.zeros((3, 100), np.float32), RATE)


# ------------------------------------------------------------------------------ separate.py


def test_separate_py_on_a_folder_with_bad_files(ckpt, tmp_path, monkeypatch, capsys):
    songs = tmp_path / "songs"
    write(songs / "good.wav", song(0.8), subtype="FLOAT")
    write(songs / "album" / "deep.flac", song(0.7, rate=48000), 48000)
    (songs / "text.mp3").write_text("not an mp3")
    (songs / "empty.wav").write_bytes(b"")
    nan = song(0.5)
    nan[0, 100] = np.inf
    write(songs / "inf.wav", nan, subtype="FLOAT")
    write(songs / "six.wav", np.zeros((6, 1000), np.float32), subtype="FLOAT")
    (songs / "notes.txt").write_text("ignored: not an audio extension")
    out = tmp_path / "out"
    argv = [f"ckpt={ckpt}", f"input={songs}", f"output_dir={out}", "segment=0.5",
            "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    code, err = run_entry_point("separate", argv, monkeypatch, capsys)
    assert code == 2
    assert "4 of 6 song(s) failed" in one_error_line(err, "separate")
    log_file = tmp_path / "run" / "separate.log"  # Hydra's copy of the console log
    logged = log_file.read_text()
    for bad, problem in [("text.mp3", "can read"), ("empty.wav", "empty file"),
                         ("inf.wav", "Inf sample"), ("six.wav", "6 channels")]:  # fmt: skip
        assert any(bad in line and problem in line for line in logged.splitlines()), bad
    assert sorted(p.name for p in out.iterdir()) == ["deep", "good"]
    assert "real-time factor" in logged and "peak memory" in logged
    # a rerun skips both finished songs and still reports the bad ones
    log_file.unlink()
    code, err = run_entry_point("separate", argv, monkeypatch, capsys)
    assert code == 2 and log_file.read_text().count("skipped, its stems exist") == 2


def test_separate_py_with_a_dsp_baseline_and_its_errors(tmp_path, monkeypatch, capsys):
    path = write(tmp_path / "x.wav", song(0.4), subtype="FLOAT")
    out = tmp_path / "out"
    base = [f"input={path}", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    code, _ = run_entry_point("separate", ["model=hpss_repet", "two_stems=vocals", *base],
                              monkeypatch, capsys)  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (out / "x").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    assert read(out / "x" / "vocals.wav")[0].shape == song(0.4).shape
    for argv, message in [
        (["model=hpss_repet", "format=ogg"], "format"),
        (["model=hpss_repet", "format=flac", "bit_depth=32"], "FLAC"),
        (["model=simple_demucs"], "random weights"),
        (["ckpt=nope.ckpt"], "checkpoint not found"),
        ([], "no separator given"),
        (["model=hpss_repet", "two_stems=piano"], "two_stems=piano"),
        (["model=hpss_repet", "device=cuda:7"], "device=cuda:7"),
    ]:
        code, err = run_entry_point("separate", [*argv, *base[0:1], f"output_dir={out}2",
                                                 base[2]], monkeypatch, capsys)  # fmt: skip
        assert code == 2 and message in one_error_line(err, "separate"), (argv, err)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_entry_point(
        "separate", ["model=hpss_repet", f"input={path}", f"output_dir={blocker}/o", base[2]],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 2 and "output_dir=" in one_error_line(err, "separate")
    twin = write(tmp_path / "b" / "x.flac", song(0.2), RATE)
    code, err = run_entry_point(
        "separate", ["model=hpss_repet", f"input=[{path},{twin}]", f"output_dir={out}", base[2]],
        monkeypatch, capsys,
    )  # fmt: skip
    assert code == 2 and "would both write to" in one_error_line(err, "separate")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_an_m4a_song_through_ffmpeg(separator, tmp_path):
    wav = write(tmp_path / "in.wav", song(1.0), subtype="PCM_16")
    m4a = tmp_path / "in.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-c:a", "aac",
                    str(m4a)], check=True)  # fmt: skip
    result = separator.separate_file(m4a, tmp_path / "out")
    stem, rate = read(result.stems["vocals"])
    assert rate == RATE and stem.shape[0] == 2
    # AAC decodes with the encoder's padding at the end (mss.io.read): not shorter than the song
    assert stem.shape[1] >= song(1.0).shape[1]

"""The evaluation path: mss.evaluate.evaluate, evaluate_from_config and eval.py, against museval."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import museval
import numpy as np
import pytest
import simplejson
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn

from mss.data.index import index_tracks
from mss.data.toy import make_toy_dataset
from mss.evaluate import evaluate, evaluate_from_config
from mss.inference import InferenceSettings
from mss.metrics import METRICS
from mss.metrics.museval_json import read_track_json

REPO = Path(__file__).resolve().parents[1]
RATE = 8000
PAIR = ["vocals", "accompaniment"]


class ScaledMixture(nn.Module):
    """Test-only pointwise separator: every source is `scale * mix + distort * mix^2`.

    `scale` defaults to 1 / S (the "mixture as estimate" baseline). The square term puts the
    estimates outside the span of the references' filters, so that SAR is a real number and
    not the ~190 dB rounding noise an exact scaled mixture gives. `calls` counts forward calls
    over all instances (evaluate_from_config builds its own).
    """

    trainable = False
    calls = 0

    def __init__(
        self,
        sources,
        sample_rate,
        audio_channels: int = 2,
        scale: float | None = None,
        distort: float = 0.5,
    ):
        super().__init__()
        self.distort = distort
        self.sources = list(sources)
        self.sample_rate = int(sample_rate)
        self.audio_channels = audio_channels
        self.scale = 1 / len(self.sources) if scale is None else scale

    def forward(self, mix: Tensor) -> Tensor:
        type(self).calls += 1
        estimate = self.scale * mix + self.distort * mix.square()
        return estimate[:, None].repeat(1, len(self.sources), 1, 1)


class Failing(ScaledMixture):
    """Raises on its second track, as an interrupted run would stop."""

    def forward(self, mix: Tensor) -> Tensor:
        if type(self).calls >= 1:
            raise KeyboardInterrupt
        return super().forward(mix)


TARGET = f"{__name__}.ScaledMixture"


def framewise_snr(references, estimates, sources, win, hop, track_name=None):
    """A cheap stand-in scorer (museval's SDR in images mode is this framewise SNR)."""
    frames = max(1, (references.shape[1] - win) // hop + 1)
    scores = {}
    for j, source in enumerate(sources):
        values = []
        for k in range(frames):
            s = references[j, k * hop : k * hop + win]
            e = estimates[j, k * hop : k * hop + win] - s
            values.append(10 * np.log10(np.sum(s**2) / np.sum(e**2)))
        scores[source] = {m: np.array(values) for m in METRICS}
    return scores


@pytest.fixture
def cheap_scorer(monkeypatch):
    """Score with `framewise_snr` instead of museval: for tests of the runner, not the metric."""
    monkeypatch.setattr("mss.evaluate.get_backend", lambda name, device=None: framewise_snr)


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory) -> Path:
    """2 test tracks of 2.5 s at 8 kHz with stems vocals/accompaniment (museval stays quick)."""
    root = tmp_path_factory.mktemp("pair") / "musdb"
    return make_toy_dataset(root, n_train=1, n_test=2, seconds=2.5, sample_rate=RATE, seed=3,
                            sources=PAIR)  # fmt: skip


@pytest.fixture
def pair_tracks(pair_root):
    return index_tracks(pair_root, "test", PAIR, RATE)


def museval_reference(tracks, sources, estimate_fn):
    """What SiSEC18 does: eval_mus_track per track (musdb-like targets read as float64)."""
    stores = []
    for track in tracks:
        refs = {s: sf.read(track.file(s), always_2d=True)[0] for s in sources}
        mix = sf.read(track.file("mixture"), always_2d=True, dtype="float32")[0]
        targets = {s: type("T", (), {"audio": refs[s]})() for s in sources}
        fake = type("Track", (), {"name": track.name, "targets": targets, "rate": track.sample_rate,
                                  "subset": "test"})()  # fmt: skip
        stores.append(museval.eval_mus_track(fake, {s: estimate_fn(mix, s) for s in sources}))
    evalstore = museval.EvalStore()
    for store in stores:
        evalstore.add_track(store)
    return stores, evalstore.agg_frames_tracks_scores().unstack()


def json_targets(path: Path):
    return simplejson.loads(Path(path).read_text(), allow_nan=True)["targets"]


def assert_same_frames(ours_path: Path, store: museval.TrackStore, atol: float = 2e-5):
    """Every frame and metric of our JSON equals museval's TrackStore (same NaN frames).

    Not bit-equal: chunked overlap-add rounds the estimates differently from the reference
    computation (float32 noise), which can move the 5th decimal.
    """
    ours = {t["name"]: t["frames"] for t in json_targets(ours_path)}
    theirs = simplejson.loads(store.json, allow_nan=True)["targets"]
    assert sorted(ours) == sorted(t["name"] for t in theirs)
    for target in theirs:
        assert len(ours[target["name"]]) == len(target["frames"])
        for mine, frame in zip(ours[target["name"]], target["frames"], strict=True):
            assert (mine["time"], mine["duration"]) == (frame["time"], frame["duration"])
            for metric in METRICS:
                assert mine["metrics"][metric] == pytest.approx(
                    frame["metrics"][metric], abs=atol, nan_ok=True
                ), (target["name"], frame["time"], metric)


def test_evaluate_equals_museval_and_writes_everything(pair_tracks, tmp_path):
    out = tmp_path / "eval"
    model = ScaledMixture(PAIR, RATE)
    summary = evaluate(model, pair_tracks, PAIR, out, InferenceSettings(0.7, device="cpu"),
                       save_estimates=True)  # fmt: skip

    stores, medians = museval_reference(pair_tracks, PAIR, lambda mix, s: 0.5 * mix + 0.5 * mix**2)
    for track, store in zip(pair_tracks, stores, strict=True):
        assert_same_frames(out / "tracks" / f"{track.name}.json", store)
    for source in PAIR:
        for metric in METRICS:
            assert summary.sisec18.loc[source, metric] == pytest.approx(
                medians.loc[source, metric], abs=2e-5
            )

    # estimates as the separator gave them: not normalised, not clipped
    for track in pair_tracks:
        mix = sf.read(track.file("mixture"), always_2d=True, dtype="float32")[0]
        for source in PAIR:
            audio, rate = sf.read(out / "estimates" / track.name / f"{source}.wav", dtype="float32")
            assert (
                rate == RATE
                and sf.info(out / "estimates" / track.name / "vocals.wav").subtype == "FLOAT"
            )
            np.testing.assert_allclose(audio, 0.5 * mix + 0.5 * mix**2, atol=1e-6)
    for name in ("summary.md", "summary.csv", "summary.json", "per_track.csv", "boxplot_SDR.png"):
        assert (out / name).is_file()
    assert summary.tracks == [t.name for t in pair_tracks]
    meta = simplejson.loads((out / "tracks" / "toy-test-00.json").read_text(), allow_nan=True)
    assert meta["mss"]["backend"] == "museval" and set(meta["mss"]["usdr"]) == set(PAIR)


def test_resume_skips_finished_tracks(pair_tracks, tmp_path, cheap_scorer):
    out = tmp_path / "eval"
    model = ScaledMixture(PAIR, RATE, scale=0.3)
    ScaledMixture.calls = 0
    first = evaluate(model, pair_tracks, PAIR, out, InferenceSettings(None, device="cpu"))
    assert ScaledMixture.calls == 2  # one whole-track call per track
    done = out / "tracks" / "toy-test-00.json"
    (out / "tracks" / "toy-test-01.json").unlink()
    mtime = done.stat().st_mtime_ns

    again = evaluate(model, pair_tracks, PAIR, out, InferenceSettings(None, device="cpu"))
    assert ScaledMixture.calls == 3  # only the missing track was separated again
    assert done.stat().st_mtime_ns == mtime
    assert again.table().equals(first.table())

    evaluate(model, pair_tracks, PAIR, out, InferenceSettings(None), overwrite=True)
    assert ScaledMixture.calls == 5 and done.stat().st_mtime_ns != mtime

    # asking for estimates that the earlier run did not write separates again, once
    evaluate(model, pair_tracks, PAIR, out, InferenceSettings(None), save_estimates=True)
    assert ScaledMixture.calls == 7 and (out / "estimates" / "toy-test-01" / "vocals.wav").is_file()
    evaluate(model, pair_tracks, PAIR, out, InferenceSettings(None), save_estimates=True)
    assert ScaledMixture.calls == 7

    with pytest.raises(ValueError, match="different evaluation.*separator"):
        evaluate(model, pair_tracks, PAIR, out, InferenceSettings(None),
                 tag={"separator": "another"})  # fmt: skip


def test_interrupted_run_leaves_no_partial_file_and_resumes(pair_tracks, tmp_path, cheap_scorer):
    out = tmp_path / "eval"
    Failing.calls = 0
    with pytest.raises(KeyboardInterrupt):
        evaluate(Failing(PAIR, RATE), pair_tracks, PAIR, out, InferenceSettings(None, 0.0))
    assert sorted(p.name for p in (out / "tracks").iterdir()) == ["toy-test-00.json"]
    ScaledMixture.calls = 0
    evaluate(ScaledMixture(PAIR, RATE), pair_tracks, PAIR, out, InferenceSettings(None, 0.0))
    assert ScaledMixture.calls == 1


WHOLE = InferenceSettings(None, 0.0)


def test_separator_must_match_the_data(pair_tracks, tmp_path):
    with pytest.raises(ValueError, match=r"separates into \['accompaniment', 'vocals'\]"):
        evaluate(ScaledMixture(PAIR[::-1], RATE), pair_tracks, PAIR, tmp_path, WHOLE)
    with pytest.raises(ValueError, match="44100 Hz but the data is at 8000 Hz"):
        evaluate(ScaledMixture(PAIR, 44100), pair_tracks, PAIR, tmp_path, WHOLE)
    with pytest.raises(ValueError, match="expects 1 channel"):
        evaluate(
            ScaledMixture(PAIR, RATE, audio_channels=1),
            pair_tracks,
            PAIR,
            tmp_path,
            InferenceSettings(None, 0.0),
        )
    with pytest.raises(ValueError, match="no tracks"):
        evaluate(ScaledMixture(PAIR, RATE), [], PAIR, tmp_path, InferenceSettings(None, 0.0))


# ------------------------------------------------------------------ config and command line


def eval_config(root: Path, out: Path, overrides=(), model: dict | None = None):
    """conf/eval.yaml composed on a MUSDB-layout root; `model` replaces the model group."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="eval",
            overrides=[
                "data=musdb18hq",
                f"data.root={root}",
                "data.validation_tracks=[toy-train-00]",
                f"output_dir={out}",
                "device=cpu",
                *overrides,
            ],
        )
    if model is not None:
        with open_dict(cfg):
            cfg.model = OmegaConf.create(model)
    return cfg


MODEL = {"_target_": TARGET, "sources": "${data.sources}", "sample_rate": "${data.sample_rate}"}


@pytest.mark.slow
def test_eval_from_config_on_tiny_musdb_equals_museval(tiny_musdb_root, tmp_path):
    """The whole path on the shared tiny set (4 stems, 44.1 kHz) against musdb + museval."""
    import musdb

    # one track: museval takes tens of seconds per 4-stem track on 2 busy cores
    cfg = eval_config(tiny_musdb_root, tmp_path / "eval", ["segment=1.0", "tracks=[toy-test-01]"],
                      MODEL)  # fmt: skip
    summary = evaluate_from_config(cfg)

    db = musdb.DB(root=str(tiny_musdb_root), is_wav=True, subsets="test")
    evalstore = museval.EvalStore()
    for track in [t for t in db.tracks if t.name == "toy-test-01"]:
        mix = track.audio.astype(np.float32)
        estimates = {s: mix / 4 + 0.5 * mix**2 for s in ["drums", "bass", "other", "vocals"]}
        store = museval.eval_mus_track(track, estimates)
        evalstore.add_track(store)
        # musdb lists vocals first: the joint run's source order differs, the scores do not
        assert_same_frames(tmp_path / "eval" / "tracks" / f"{track.name}.json", store)
    medians = evalstore.agg_frames_tracks_scores().unstack()
    assert summary.tracks == ["toy-test-01"]
    for source in ["drums", "bass", "other", "vocals"]:
        for metric in METRICS:
            assert summary.sisec18.loc[source, metric] == pytest.approx(
                medians.loc[source, metric], abs=2e-5
            )


def test_eval_from_config_checkpoint_path(pair_root, tmp_path, monkeypatch, cheap_scorer):
    loaded = []

    def load_separator(path, allowed_targets=(), net_overrides=None):
        loaded.append((path, net_overrides))
        return ScaledMixture(PAIR, RATE)

    monkeypatch.setattr("mss.checkpoint.load_separator", load_separator)
    overrides = [f"data.sources=[{','.join(PAIR)}]", f"data.sample_rate={RATE}",
                 "ckpt=some/model.ckpt", "tracks=[toy-test-01]", "split=test",
                 "net_overrides={wiener_iterations:1}"]  # fmt: skip
    summary = evaluate_from_config(eval_config(pair_root, tmp_path / "e", overrides))
    assert loaded == [("some/model.ckpt", {"wiener_iterations": 1})]
    assert summary.tracks == ["toy-test-01"]
    meta = simplejson.loads((tmp_path / "e" / "tracks" / "toy-test-01.json").read_text())
    assert meta["mss"]["separator"] == f"ckpt:{Path('some/model.ckpt').resolve()}"


@pytest.mark.parametrize(
    "overrides, model, message",
    [
        ([], None, "no separator given: pass ckpt=PATH"),
        (["ckpt=x.ckpt"], MODEL, "give one of ckpt=PATH, onnx=PATH or model=<name>, not ckpt"),
        (["model=simple_demucs", "model.channels=4", "model.lstm_layers=1"], None,
         "trainable and has no pretrained weights, so it would run with random"),
        (["split=train"], MODEL, "split must be 'test' or 'valid'"),
        (["tracks=[nope]"], MODEL, r"unknown track\(s\) \['nope'\]"),
        (["split=valid", "tracks=[toy-test-00]"], MODEL, "unknown track"),
        (["data.sources=[vocals,accompaniment]"], {**MODEL, "sources": ["vocals", "other"]},
         "separates into"),
        ([f"data.sample_rate={RATE}", "data.sources=[vocals,accompaniment]"],
         {**MODEL, "sample_rate": 44100}, "44100 Hz"),
    ],
)  # fmt: skip
def test_eval_config_errors(pair_root, tmp_path, overrides, model, message):
    sources = [] if any(o.startswith("data.sources") for o in overrides) else [
        "data.sources=[vocals,accompaniment]"]  # fmt: skip
    rate = [] if any(o.startswith("data.sample_rate") for o in overrides) else [
        f"data.sample_rate={RATE}"]  # fmt: skip
    cfg = eval_config(pair_root, tmp_path, [*sources, *rate, *overrides], model)
    with pytest.raises(ValueError, match=message):
        evaluate_from_config(cfg)


@pytest.mark.slow
def test_eval_py_command_with_a_checkpoint(pair_root, tmp_path):
    """`python eval.py ckpt=PATH` with a checkpoint in the format train.py writes."""
    ckpt = tmp_path / "model.ckpt"
    net_config = {"_target_": TARGET, "sources": PAIR, "sample_rate": RATE}
    net_config = OmegaConf.to_yaml(OmegaConf.create(net_config))  # as train.py saves it
    torch.save({"hyper_parameters": {"net_config": net_config}, "state_dict": {}}, ckpt)
    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    command = [
        sys.executable, "eval.py", f"ckpt={ckpt}", "data=musdb18hq", f"data.root={pair_root}",
        f"data.sources=[{','.join(PAIR)}]", f"data.sample_rate={RATE}", f"output_dir={out}",
        "tracks=[toy-test-00]", f"paths.log_dir={tmp_path / 'logs'}", "device=cpu",
        # a model of the tests, not of mss.models: the user allows it explicitly
        f"allowed_targets=[{TARGET}]",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "uSDR" in result.stdout and "average" in result.stdout
    assert (out / "tracks" / "toy-test-00.json").is_file() and (out / "summary.md").is_file()
    assert "| vocals |" in (out / "summary.md").read_text()


class WholeTrack(ScaledMixture):
    """A separator that asks for whole tracks, as the DSP baselines do."""

    whole_track = True


def test_whole_track_separators_ignore_the_segment(pair_tracks, tmp_path, cheap_scorer):
    model = WholeTrack(PAIR, RATE)
    WholeTrack.calls = 0
    evaluate(model, pair_tracks, PAIR, tmp_path / "eval", InferenceSettings(0.25, device="cpu"))
    assert WholeTrack.calls == len(pair_tracks)  # one call per track, not one per chunk
    _, found = read_track_json(tmp_path / "eval" / "tracks" / f"{pair_tracks[0].name}.json")
    assert found["segment"] is None  # the provenance says what was done

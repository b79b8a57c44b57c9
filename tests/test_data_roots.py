"""Several dataset roots in one run: sampling weights, remixes per root, one-line errors, train."""

from __future__ import annotations

import math
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from mss.data.datamodule import MAX_AUTO_WORKERS, MAX_TRACK_WORKERS, MusdbDataModule
from mss.data.datasets import ChunkDataset
from mss.data.index import DatasetError, index_tracks
from mss.data.toy import make_toy_dataset
from mss.errors import ConfigError
from tests.test_cli import one_error_line, run_entry_point, train_args
from tests.test_train import compose_train, tiny_overrides
from train import train

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    """Root A: 2 train tracks of 1 s; root B: 2 train tracks of 2 s, no test/ folder.

    B holds twice the audio of A, so a draw proportional to length alone (weights ignored)
    would take A a third of the time: the weight test tells the two apart.
    """
    base = tmp_path_factory.mktemp("roots")
    a = make_toy_dataset(base / "a", n_train=2, n_test=1, seconds=1.0, seed=1)
    b = make_toy_dataset(base / "b", n_train=2, n_test=1, seconds=2.0, seed=2)
    shutil.rmtree(b / "test")  # an extra root needs no test split
    return a, b


def _root_of(track, roots) -> int:
    return next(r for r, root in enumerate(roots) if track.path.is_relative_to(root))


def test_chunks_come_from_each_root_by_its_weight(two_roots):
    groups = [index_tracks(root, "train", SOURCES) for root in two_roots]
    n, p = 2000, 0.8
    ds = ChunkDataset(
        groups, SOURCES, segment=0.01, samples_per_epoch=n, remix_probability=0.5, weights=[4, 1]
    )
    roots = [[_root_of(t, two_roots) for t, _ in ds.sample(i)[1]] for i in range(n)]
    # remixes take every source from the chunk's own root
    assert all(len(set(r)) == 1 for r in roots)
    from_a = sum(r[0] == 0 for r in roots)
    # binomial(n, p): 4 standard deviations (72 chunks) fail by chance once in 16,000 seeds;
    # weights ignored would give n / 3 = 667, far outside
    assert abs(from_a - n * p) < 4 * math.sqrt(n * p * (1 - p))
    # both tracks of each root are drawn (by length within the root, as with one root)
    drawn = {(_root_of(t, two_roots), t.name) for i in range(200) for t, _ in ds.sample(i)[1]}
    assert len(drawn) == 4


def test_silence_redraws_stay_in_the_drawn_root(two_roots, write_tree):
    # a silent root keeps its share: its chunks are redrawn in it, not in the loud root
    zeros = {s: np.zeros((2, 22050), np.float32) for s in ["mixture", *SOURCES]}
    silent = write_tree({"train/Silent": zeros}, fill=False)
    groups = [index_tracks(two_roots[0], "train", SOURCES), index_tracks(silent, "train", SOURCES)]
    ds = ChunkDataset(
        groups, SOURCES, 0.01, 400, silence_threshold=-40.0, max_silence_retries=5, weights=[1, 1]
    )
    silent_chunks = sum(ds.sample(i)[1][0][0].name == "Silent" for i in range(400))
    assert abs(silent_chunks - 200) < 4 * math.sqrt(400 * 0.25)


def test_one_root_draws_no_root(two_roots):
    # one root with a weight gives exactly the chunks of the plain track list
    tracks = index_tracks(two_roots[0], "train", SOURCES)
    kwargs = dict(segment=0.1, samples_per_epoch=8, remix_probability=0.5, seed=3)
    plain, weighted = (
        ChunkDataset(tracks, SOURCES, **kwargs),
        ChunkDataset([tracks], SOURCES, weights=[0.3], **kwargs),
    )
    for i in range(8):
        assert torch.equal(plain[i], weighted[i])
    with pytest.raises(ValueError, match="positive"):
        ChunkDataset([tracks], SOURCES, weights=[0.0], **kwargs)
    with pytest.raises(DatasetError, match="every root"):
        ChunkDataset([tracks, []], SOURCES, weights=[1, 1], **kwargs)


def _dm(root, **kwargs):
    defaults = dict(validation_tracks=[], segment=0.1, samples_per_epoch=8, batch_size=4, seed=5)
    return MusdbDataModule(root, **(defaults | kwargs))


def test_datamodule_trains_on_all_roots_validates_and_tests_on_the_first(two_roots):
    a, b = two_roots
    dm = _dm(a, validation_tracks=["toy-train-01"], extra_roots=[{"root": str(b), "weight": 0.5}])
    assert [(t.name, _root_of(t, two_roots)) for t in dm.train_tracks()] == [
        ("toy-train-00", 0),
        ("toy-train-00", 1),
        ("toy-train-01", 1),
    ]
    assert [_root_of(t, two_roots) for t in dm.valid_tracks()] == [0]
    assert [_root_of(t, two_roots) for t in dm.test_tracks()] == [0]  # b has no test/
    dataset = dm.train_dataset()
    assert dataset._root_probs.tolist() == [1 / 1.5, 0.5 / 1.5]
    assert next(iter(dm.train_dataloader())).shape == (4, 4, 2, 4410)
    # an extra root's validation_tracks join the validation set, after the first root's
    dm = _dm(
        a,
        validation_tracks=["toy-train-01"],
        extra_roots=[{"root": b, "validation_tracks": ["toy-train-00"]}],
    )
    assert [(t.name, _root_of(t, two_roots)) for t in dm.valid_tracks()] == [
        ("toy-train-01", 0),
        ("toy-train-00", 1),
    ]
    assert [(t.name, _root_of(t, two_roots)) for t in dm.train_tracks()] == [
        ("toy-train-00", 0),
        ("toy-train-01", 1),
    ]
    # a plain path is an entry of weight 1
    dm = _dm(a, extra_roots=[str(b)], root_weight=3)
    assert dm.train_dataset()._root_probs.tolist() == [0.75, 0.25]


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_root_with_other_stems_is_refused_in_one_line(two_roots, tmp_path):
    karaoke = make_toy_dataset(
        tmp_path / "k", n_train=3, n_test=1, seconds=0.5, sources=["vocals", "accompaniment"]
    )
    with pytest.raises(DatasetError) as error:
        _dm(two_roots[0], extra_roots=[{"root": karaoke}]).setup("fit")
    message = _one_line(error)
    assert message.startswith(f"data.extra_roots[0].root={karaoke}: no track of")
    assert "drums, bass, other" in message and "accompaniment, vocals" in message
    # stems beyond data.sources are not read, so they are no mismatch
    dm = _dm(two_roots[0], sources=["vocals"], extra_roots=[karaoke])
    assert len(dm.train_tracks()) == 2 + 3


def test_a_missing_or_misconfigured_root_is_refused_naming_its_key(two_roots, tmp_path):
    a, b = two_roots
    with pytest.raises(DatasetError) as error:
        _dm(a, extra_roots=[b, {"root": tmp_path / "nope"}]).setup("fit")
    message = _one_line(error)
    assert str(tmp_path / "nope") in message and "data.extra_roots[1].root" in message
    with pytest.raises(DatasetError) as error:
        _dm(
            a, extra_roots=[{"root": b, "validation_tracks": ["toy-train-00", "toy-train-01"]}]
        ).setup("fit")
    assert "data.extra_roots[0].validation_tracks" in _one_line(error)
    with pytest.raises(DatasetError) as error:
        _dm(a, extra_roots=[{"root": b, "validation_tracks": ["Nope"]}]).setup("fit")
    assert "data.extra_roots[0].validation_tracks" in _one_line(error)
    cases = {
        "data.extra_roots[0].root is missing": [{"weight": 0.5}],
        "data.extra_roots[0].weight must be a positive number": [{"root": b, "weight": -1}],
        "data.extra_roots[1].weight must be a positive number": [b, {"root": b, "weight": "x"}],
        "data.extra_roots[0]: unknown key(s) ['wieght']": [{"root": b, "wieght": 0.5}],
        "data.extra_roots must be a list": {"root": b},
        "data.extra_roots[0].validation_tracks must be a list": [
            {"root": b, "validation_tracks": "x"}
        ],
    }
    for expected, extra_roots in cases.items():
        with pytest.raises(ConfigError) as error:
            _dm(a, extra_roots=extra_roots)
        assert _one_line(error).startswith(expected)
    with pytest.raises(ConfigError, match="data.root_weight must be a positive number"):
        _dm(a, root_weight=float("nan"))


def test_train_cli_refuses_a_missing_extra_root_in_one_line(
    two_roots, tmp_path, monkeypatch, capsys
):
    missing = tmp_path / "mine"
    argv = train_args(two_roots[0], tmp_path, f"data.extra_roots=[{{root:{missing},weight:0.3}}]")
    code, err = run_entry_point("train", argv, monkeypatch, capsys)
    line = one_error_line(err, "train")
    assert code == 2 and "data.extra_roots[0].root" in line and str(missing) in line


def test_train_on_two_roots(two_roots, tmp_path):
    a, b = two_roots
    overrides = tiny_overrides(a, ["toy-train-01"], tmp_path) + [
        f"data.extra_roots=[{{root:{b},weight:0.5}}]",
        "data.root_weight=0.5",
        "debug=fdr",
    ]
    cfg = compose_train(overrides)
    dm = instantiate(cfg.data, _convert_="all")
    assert [e.root for e in dm.extra_roots] == [str(b)] and dm.root_weight == 0.5
    assert len(dm.train_tracks()) == 3
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_num_workers_auto(tiny_musdb_root, monkeypatch):
    dm = _dm(tiny_musdb_root, num_workers="auto")
    for cpus, devices, expected in [(64, 1, MAX_AUTO_WORKERS), (16, 2, 7), (4, 1, 3), (2, 1, 1)]:
        monkeypatch.setattr(
            os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False
        )
        dm.trainer = SimpleNamespace(num_devices=devices, world_size=1, global_rank=0)
        assert dm.loader_workers() == expected
    dm.trainer = None
    assert dm.loader_workers() == 1  # 2 CPUs, no trainer: one device
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert dm.train_dataloader().num_workers == 8
    assert dm.test_dataloader().num_workers == MAX_TRACK_WORKERS
    assert _dm(tiny_musdb_root, num_workers=3).loader_workers() == 3
    for bad in ["many", -1, 2.5, True]:
        with pytest.raises(ConfigError, match="data.num_workers must be an integer >= 0 or auto"):
            _dm(tiny_musdb_root, num_workers=bad)


def test_configs_default_to_one_root_and_auto_workers(tmp_path):
    base = [f"paths.output_dir={tmp_path}"]
    cfg = compose_train(base + ["data=musdb18hq"])
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.extra_roots == [] and dm.root_weight == 1.0 and dm.num_workers == "auto"
    assert compose_train(base + ["experiment=musdb18hq"]).data.num_workers == "auto"
    # the toy run loads in the training process (conf/data/toy.yaml says why)
    assert compose_train(base).data.num_workers == 0

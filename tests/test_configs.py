"""Every experiment, debug and search config composes and builds its parts.

The configs a user can only reach by name (`experiment=bench`, `debug=overfit`, ...) are not
exercised by the training tests; a typo in one would otherwise surface on a user's machine.
"""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mss.utils.instantiate import instantiate_group
from tests.test_train import CONF, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in (CONF / "debug").glob("*.yaml"))


def build(cfg):
    net = instantiate(cfg.model)
    module = instantiate(cfg.module, net=net, loss=instantiate(cfg.loss))
    callbacks = instantiate_group(cfg.callbacks)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.logger))
    datamodule = instantiate(cfg.data, _convert_="all")
    return module, trainer, datamodule


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    assert cfg.test is True  # every experiment ends with the leaderboard table
    _, trainer, _ = build(cfg)
    names = {type(c).__name__ for c in trainer.callbacks}
    assert {"ModelCheckpoint", "EarlyStopping", "ValidationSDR"} <= names
    if experiment == "bench":
        # the comparison budget is CPU time, not wall time
        assert "CPUTimeBudget" in names and cfg.trainer.max_time is None
        assert cfg.data.num_workers == 0


@pytest.mark.parametrize("debug", DEBUGS)
def test_debug_config_builds(debug, tmp_path):
    cfg = compose_train([f"debug={debug}", f"paths.output_dir={tmp_path}"])
    build(cfg)


def test_lr_search_sweeps_and_names_its_metric(tmp_path):
    cfg = compose_train(["hparams_search=lr", f"paths.output_dir={tmp_path}"])
    assert cfg.optimized_metric == "val/loss"


def test_one_set_of_inference_settings_for_every_entry_point():
    """conf/inference/default.yaml and InferenceSettings carry the same defaults, and train.py
    (validation, test=true) and eval.py read them from that one group."""
    from dataclasses import fields

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mss.inference import InferenceSettings

    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "inference" / "default.yaml"))
    assert yaml == InferenceSettings().to_dict()
    assert sorted(yaml) == sorted(f.name for f in fields(InferenceSettings))

    cfg = compose_train(["inference.segment=3.5", "inference.overlap=0.5"])
    assert (cfg.module.valid_segment, cfg.module.valid_overlap) == (3.5, 0.5)
    assert InferenceSettings.from_config(cfg.inference).segment == 3.5
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        evaluation = compose(config_name="eval", overrides=["segment=2.5", "shifts=2"])
    settings = InferenceSettings.from_config(evaluation)
    assert (settings.segment, settings.shifts, settings.overlap) == (2.5, 2, 0.25)


def test_inference_settings_refuse_bad_values():
    from mss.errors import ConfigError
    from mss.inference import InferenceSettings, resolve_device

    for bad in ({"overlap": 1.0}, {"segment": 0}, {"batch_size": 0}, {"shifts": -1}):
        with pytest.raises(ConfigError, match=f"inference.{next(iter(bad))}"):
            InferenceSettings(**bad)
    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(ConfigError, match="device=gpu7: not a device name"):
        resolve_device("gpu7")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        # the measured per-model recipe (conf/experiment_model/bench_simple_demucs.yaml)
        (["experiment=bench", "model=simple_demucs"], "data.batch_size", 2),
        (["experiment=bench"], "data.batch_size", 2),  # simple_demucs is the default model
        # a model without its own recipe keeps the experiment's batch
        (["experiment=bench", "model=unet"], "data.batch_size", 4),
        # the command line wins over both
        (["experiment=bench", "model=simple_demucs", "data.batch_size=8"], "data.batch_size", 8),
        # no experiment: no per-model recipe either
        (["model=simple_demucs"], "data.batch_size", None),
        # conf/experiment_model/bench_openunmix.yaml
        (["experiment=bench", "model=openunmix"], "model.hidden_size", 256),
        (["experiment=bench", "model=openunmix"], "trainer.check_val_every_n_epoch", 4),
        (["model=openunmix"], "trainer.check_val_every_n_epoch", 1),
        (["experiment=bench", "model=unet"], "trainer.check_val_every_n_epoch", 1),
        # outside the benchmark the model is the package's umxhq
        (["model=openunmix"], "model.hidden_size", 512),
        (
            ["experiment=bench", "model=openunmix", "model.hidden_size=512"],
            "model.hidden_size",
            512,
        ),
    ],
)
def test_experiment_model_recipe(overrides, key, expected):
    if expected is None:  # the data config's own
        expected = OmegaConf.select(compose_train(["model=unet"]), key)
    assert OmegaConf.select(compose_train(overrides), key) == expected

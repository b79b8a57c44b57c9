"""Every experiment, debug and search config composes and builds its parts.

The configs a user can only reach by name (`experiment=bench`, `debug=overfit`, ...) are not
exercised by the training tests; a typo in one would otherwise surface on a user's machine.
"""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

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

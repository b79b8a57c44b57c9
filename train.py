"""Train a separator: `python train.py [model=simple_demucs] [data=musdb18hq data.root=...]`."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mss.checkpoint import load_separator
from mss.cli import entry_point
from mss.cluster import export_local_ranks
from mss.errors import CheckpointError, ConfigError
from mss.evaluate import evaluate
from mss.inference import InferenceSettings
from mss.metrics.aggregate import Summary
from mss.metrics.report import print_summary
from mss.models._contract import check_separator
from mss.sweep import objective, run_trial
from mss.utils.instantiate import instantiate_group
from mss.utils.malloc import keep_freed_memory

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """`last` means this run directory's `checkpoints/last.ckpt` (re-run with the same
    `hydra.run.dir` to continue an interrupted run); `auto` means that file if it exists, else
    start afresh (a requeued cluster job finds its own); anything else must be an existing file."""
    if ckpt_path is None:
        return None
    last = Path(output_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        return str(last) if last.is_file() else None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path}"
            + (" (run again with hydra.run.dir=<the run's folder>)" if ckpt_path == "last" else "")
        )
    return str(path)


def train(cfg: DictConfig) -> dict:
    """Fit (and optionally test) the configured separator; returns the final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    net = instantiate(cfg.model)
    if not check_separator(net).trainable:
        raise ConfigError(
            f"model {type(net).__name__} is a fixed DSP baseline with nothing to train; "
            "evaluate it with `python eval.py model=<its config name>` (no checkpoint needed)"
        )
    # a wrong checkpoint path fails before the data is read
    ckpt_path = (
        resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)
        if cfg.train and cfg.ckpt_path is not None
        else None
    )
    # plain lists, not ListConfig: Lightning saves the data hparams in checkpoints that resume
    # loads with weights_only=True
    datamodule = instantiate(cfg.data, _convert_="all")
    # Index and check the data before the loggers and the trainer start, so that a bad dataset
    # fails at once in one line and leaves no empty run behind. DDP ranks are started later,
    # inside fit, and find the toy set already generated.
    datamodule.prepare_data()
    datamodule.setup("fit" if cfg.train else "test")
    module = instantiate(
        cfg.module,
        net=net,
        loss=instantiate(cfg.loss),
        # YAML text, not a dict: Hydra would instantiate a dict with a `_target_`
        net_config=OmegaConf.to_yaml(cfg.model, resolve=True),
    )
    # tasks of a submitit job (hydra/launcher=slurm_local) form one DDP world
    export_local_ranks()
    trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
    )

    metrics: dict = {}
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        metrics["best_ckpt"] = best
        if trainer.is_global_zero:
            log.info("best checkpoint: %s", best or "(none)")
    if cfg.test and trainer.is_global_zero:
        best = metrics.get("best_ckpt") or cfg.ckpt_path
        metrics["test"] = test_checkpoint(cfg, best, datamodule)
    return metrics


def test_checkpoint(cfg: DictConfig, ckpt_path: str | None, datamodule) -> Summary:
    """Score a checkpoint on the test split with the leaderboard protocol (as eval.py does)."""
    if not ckpt_path:
        raise ConfigError(
            "test=true needs a checkpoint: train with checkpointing or pass ckpt_path"
        )
    datamodule.prepare_data()
    datamodule.setup("test")
    summary = evaluate(
        load_separator(ckpt_path),
        datamodule.test_tracks(),
        datamodule.sources,
        out_dir=cfg.eval.output_dir,
        inference=InferenceSettings.from_config(cfg.inference),
        backend=cfg.eval.backend,
        tag={"separator": f"ckpt:{Path(ckpt_path).resolve()}", "split": "test"},
    )
    print_summary(summary, title=f"{Path(ckpt_path).name} on test ({cfg.eval.backend})")
    return summary


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    # hparams_search configs name the value a sweep optimises; under hparams_search=optuna a
    # failed run fails its trial only, and the sweep goes on
    return run_trial(lambda: objective(train(cfg), cfg.get("optimized_metric")))


if __name__ == "__main__":
    main()

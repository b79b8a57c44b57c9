"""One LightningModule for every trainable separator; rebuilding a separator from a checkpoint."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from mss.apply import separate
from mss.callbacks.cpu_budget import CPUTimeBudget
from mss.callbacks.finite_guard import NonFiniteGuard
from mss.callbacks.rng_state import RNGState
from mss.data.datasets import TrackSampler
from mss.errors import ConfigError
from mss.inference import InferenceSettings
from mss.metrics.usdr import EPS as USDR_EPS
from mss.models._contract import check_separator


def ignore_sync_dist_advice() -> None:
    """Silence Lightning's "use sync_dist=True" warning for the metrics mss gathers itself.

    `val/loss`, `val/usdr*` and the BSSEval `val/<metric>*` are gathered over the DDP ranks
    exactly (per-track means, medians over tracks: `on_validation_epoch_end`, ValidationSDR)
    and logged as global values on every rank; syncing them again would only average equal
    numbers. Other metrics keep the warning.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"It is recommended to use `self\.log\('val/(loss|usdr|sdr|sir|isr|sar)(_[^']*)?', "
        r"\.\.\., sync_dist=True\)`",
        category=PossibleUserWarning,
    )


OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def song_sdr(estimate: Tensor, reference: Tensor, eps: float = USDR_EPS) -> Tensor:
    """MDX song-level SDR (uSDR) per source, in torch (`mss.metrics.usdr` is the numpy one).

    Args:
        estimate, reference: [B, S, C, T].
    Returns:
        [B, S] in dB, over all channels and samples of each source.
    """
    signal = reference.square().sum(dim=(-2, -1))
    error = (reference - estimate).square().sum(dim=(-2, -1))
    return 10 * torch.log10((signal + eps) / (error + eps))


class SeparationModule(L.LightningModule):
    """Trains any separator that keeps the contract `net(mix[B, C, T]) -> stems[B, S, C, T]`.

    Training batches are random chunks `(mix, stems)` (augmented by the data module); validation
    batches are full tracks, separated with the same chunked overlap-add as evaluation so that
    validation sees what users will get.

    Args:
        net: the separator.
        loss: a module `loss(estimate, reference) -> scalar` with `components(...)` (a dict of
            the loss and its terms, logged as `train/loss` and `train/loss_<term>`), such as
            `mss.losses.SeparationLoss`.
        optimizer: factory `optimizer(params) -> Optimizer` (Hydra `_partial_`).
        scheduler: optional factory `scheduler(optimizer) -> LRScheduler`.
        scheduler_monitor: metric a ReduceLROnPlateau scheduler watches.
        scheduler_interval: "epoch" or "step": when the scheduler steps. A factory that takes
            `total_steps` or `progress` (`mss.schedules.warmup_cosine`) and is not given them
            gets the run's horizon: the CPU budget's progress when a `CPUTimeBudget` callback
            runs, else the trainer's estimated number of optimizer steps.
        valid_segment: seconds per chunk when separating validation tracks (None: whole track).
        valid_overlap: overlap between validation chunks, in [0, 1).
        net_config: the resolved Hydra config that built `net`, as YAML text; saved in the
            checkpoint so that the checkpoint alone rebuilds the separator
            (`mss.checkpoint.load_separator`).
        compile: run the training forward through `torch.compile(net)` (compiled on the first
            training step; validation stays eager, as it calls the net on other shapes and in
            eval mode, each a recompilation). Checkpoints keep the plain `net.*` keys.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_monitor: str | None = "val/loss",
        scheduler_interval: str = "epoch",
        valid_segment: float | None = InferenceSettings.segment,
        valid_overlap: float = InferenceSettings.overlap,
        net_config: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        trainable = any(p.requires_grad for p in net.parameters())
        if not check_separator(net).trainable or not trainable:
            raise ConfigError(
                f"{type(net).__name__} has no trainable parameters: it is a fixed baseline. "
                "Evaluate it directly with `python eval.py model=<name>`."
            )
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.sources = list(net.sources)
        self._train_forward: Callable[[Tensor], Tensor] | None = None

    def forward(self, mix: Tensor) -> Tensor:
        return self.net(mix)

    def setup(self, stage: str) -> None:
        # here rather than at import: filters set inside a caller's catch_warnings are lost
        ignore_sync_dist_advice()
        if stage == "fit" and self.hparams.compile and self._train_forward is None:
            # The compiled net's own forward, a function: stored as a module (torch.compile's
            # OptimizedModule) it would be registered and put `_orig_mod.` keys in checkpoints.
            # Set here, in each process after DDP has started its ranks. Static shapes: the
            # batches have one shape, and torchaudio's HDemucs, whose layers run at several
            # lengths, fails in inductor once Dynamo makes those lengths symbolic.
            self._train_forward = torch.compile(self.net.forward, dynamic=False)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        mix, stems = batch
        estimate = (self._train_forward or self.net)(mix)
        terms = self.loss.components(estimate, stems)
        self.log("train/loss", terms["loss"], prog_bar=True, on_step=True, on_epoch=True,
                 sync_dist=True)  # fmt: skip
        for name in ("l1", "stft"):
            if name in terms:
                self.log(f"train/loss_{name}", terms[name], on_epoch=True, sync_dist=True)
        return terms["loss"]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        mix, stems = batch
        estimate = separate(
            self.net,
            mix,
            segment=self.hparams.valid_segment,
            overlap=self.hparams.valid_overlap,
            sample_rate=self.net.sample_rate,
            device=mix.device,
        ).to(mix.device)
        # one row per track, [loss, uSDR per source], reduced over all ranks at the epoch's end;
        # a track repeated to even out DDP ranks gives a NaN row so that it counts once
        row = torch.cat([self.loss(estimate, stems)[None], song_sdr(estimate, stems).mean(0)])
        if self.is_repeated_track(batch_idx):
            row = torch.full_like(row, float("nan"))
        self._validation_rows.append(row.detach())
        # for callbacks that score the full-track estimates (mss.callbacks.ValidationSDR)
        return {"estimate": estimate}

    def on_validation_epoch_start(self) -> None:
        self._validation_rows: list[Tensor] = []

    def on_validation_epoch_end(self) -> None:
        """`val/loss` and the MDX `val/usdr` (mean over tracks) of the whole validation set.

        Gathered from every rank and averaged here rather than with `self.log(sync_dist=True)`,
        whose weighted mean divides integer batch counts (uneven ranks get the wrong mean).
        """
        if not self._validation_rows:
            return
        local = torch.stack(self._validation_rows)  # [tracks, 1 + S]
        rows = self.all_gather(local).reshape(-1, local.shape[-1])
        means = rows.nanmean(0)
        self.log("val/loss", means[0], prog_bar=True)
        for name, value in zip(self.sources, means[1:], strict=True):
            self.log(f"val/usdr_{name}", value)
        self.log("val/usdr", means[1:].mean(), prog_bar=True)

    def is_repeated_track(self, batch_idx: int) -> bool:
        """Whether validation batch ``batch_idx`` of this rank is padding added under DDP so
        that every rank runs as many steps (see :class:`mss.data.datasets.TrackSampler`)."""
        loader = self.trainer.val_dataloaders if self._trainer is not None else None
        sampler = getattr(loader, "sampler", None)
        return isinstance(sampler, TrackSampler) and sampler.is_repeat(batch_idx)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        if self.hparams.scheduler_interval not in ("epoch", "step"):
            raise ConfigError(
                f"module.scheduler_interval must be epoch or step, "
                f"got {self.hparams.scheduler_interval!r}"
            )
        scheduler = self.scheduler_factory(optimizer=optimizer, **self._horizon())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.hparams.scheduler_monitor,
                "interval": self.hparams.scheduler_interval,
                "frequency": 1,
                # ReduceLROnPlateau is stepped by StepPlateauAfterValidation; without this,
                # Lightning fails an epoch that has no validation (check_val_every_n_epoch > 1)
                "strict": not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau),
            },
        }

    def _horizon(self) -> dict[str, Any]:
        """`total_steps` or `progress` for a scheduler factory that wants them and lacks them."""
        factory = self.scheduler_factory
        wanted = inspect.signature(factory).parameters
        given = getattr(factory, "keywords", {})
        if "progress" in wanted and given.get("progress") is None:
            budget = next((c for c in self.trainer.callbacks if isinstance(c, CPUTimeBudget)), None)
            if budget is not None:
                return {"progress": lambda: budget.used / budget.max_cpu_seconds}
        if "total_steps" in wanted and given.get("total_steps") is None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ConfigError(
                    "module/scheduler=cosine needs a horizon: set trainer.max_steps or "
                    "trainer.max_epochs, or add the cpu_budget callback"
                )
            return {"total_steps": int(total)}
        return {}

    def configure_callbacks(self) -> list[Callback]:
        # part of training itself, whatever callbacks the config lists
        return [StepPlateauAfterValidation(), NonFiniteGuard(), RNGState()]

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return  # stepped by StepPlateauAfterValidation
        super().lr_scheduler_step(scheduler, metric)

    def on_train_epoch_start(self) -> None:
        # Chunks are drawn from a per-(seed, epoch, index) generator; tell the dataset the epoch
        # so a resumed run draws what the uninterrupted run would have.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)


class StepPlateauAfterValidation(Callback):
    """Step ReduceLROnPlateau schedulers as soon as validation has produced their metric.

    Lightning steps them at the end of the training epoch, after ModelCheckpoint has written
    `last.ckpt` (checkpoint callbacks run last on validation end); a run resumed from that file
    would then miss one scheduler step. Stepping here puts the step inside the checkpoint.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for config in trainer.lr_scheduler_configs:
            if not config.reduce_on_plateau:
                continue
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                raise KeyError(
                    f"the scheduler monitors {config.monitor!r}, which validation did not log; "
                    f"logged: {sorted(trainer.callback_metrics)}"
                )
            config.scheduler.step(metric)

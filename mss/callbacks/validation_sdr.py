"""Leaderboard SDR on the full validation tracks during training (`val/sdr`)."""

from __future__ import annotations

import io

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from mss.metrics.aggregate import nanmedian
from mss.metrics.bsseval import bss_eval_track


class ValidationSDR(Callback):
    """Every `every_n_epochs`, score the validation estimates with BSSEval v4 as eval.py does.

    The validation step already separates every validation track in full with chunked
    overlap-add (`SeparationModule.validation_step` returns the estimate), so this callback only
    scores: SiSEC18 aggregation, median over 1 s frames then median over tracks, logged as
    `val/sdr_<source>` and `val/sdr` (mean over sources) so that ModelCheckpoint and
    EarlyStopping can monitor the leaderboard metric. With `metrics: all` it also logs SIR, ISR
    and SAR (`val/sir_<source>`, ...), which costs the distortion filters.

    Every `media_every_n_epochs` it sends `media_seconds` of the first `media_tracks` validation
    estimates as audio, with a spectrogram figure, to the loggers that take media (TensorBoard,
    wandb).

    Under DDP each rank scores its own tracks and the per-track medians are gathered, so the
    numbers are those of the whole validation set; the tracks repeated to even out the ranks
    are left out, so each track counts once.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        metrics: str = "sdr",
        win: float = 1.0,
        hop: float = 1.0,
        media_every_n_epochs: int = 5,
        media_tracks: int = 2,
        media_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if metrics not in ("sdr", "all"):
            raise ValueError(f"metrics must be 'sdr' or 'all', got {metrics!r}")
        self.every_n_epochs = every_n_epochs
        self.metric_names = ["SDR"] if metrics == "sdr" else ["SDR", "SIR", "ISR", "SAR"]
        self.win, self.hop = win, hop
        self.media_every_n_epochs = media_every_n_epochs
        self.media_tracks = media_tracks
        self.media_seconds = media_seconds
        self._track_medians: list[np.ndarray] = []

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._track_medians = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs,
        batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer):
            return
        if not isinstance(outputs, dict) or "estimate" not in outputs:
            raise TypeError(
                "ValidationSDR needs the validation step to return {'estimate': stems[B, S, C, T]}"
            )
        _, stems = batch
        estimate = outputs["estimate"]
        sample_rate = pl_module.net.sample_rate
        if pl_module.is_repeated_track(batch_idx):
            # padding under DDP: a NaN row keeps the ranks' gathers the same size and is
            # skipped by the median over tracks
            shape = (len(pl_module.sources), len(self.metric_names))
            self._track_medians.append(np.full(shape, np.nan))
            return
        for item in range(stems.shape[0]):
            # museval's layout: [S, T, C]
            references = stems[item].detach().transpose(1, 2).cpu().double()
            estimates = estimate[item].detach().transpose(1, 2).cpu().double()
            scores = bss_eval_track(
                references,
                estimates,
                pl_module.sources,
                win=round(self.win * sample_rate),
                hop=round(self.hop * sample_rate),
                sdr_only=self.metric_names == ["SDR"],
                track_name=f"validation track {batch_idx}",
            )
            medians = np.array(
                [[nanmedian(scores[s][m]) for m in self.metric_names] for s in pl_module.sources]
            )  # [S, metrics]
            self._track_medians.append(medians)
        media_epoch = (trainer.current_epoch + 1) % self.media_every_n_epochs == 0
        if media_epoch and batch_idx < self.media_tracks and trainer.is_global_zero:
            self._log_media(trainer, pl_module, estimate[0], batch_idx, sample_rate)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or not self._track_medians:
            return
        local = torch.as_tensor(np.stack(self._track_medians), device=pl_module.device)
        gathered = pl_module.all_gather(local)  # [world, tracks, S, M] under DDP
        per_track = gathered.reshape(-1, *local.shape[1:]).cpu().numpy()
        sisec18 = nanmedian(per_track, axis=0)  # [S, M]: median over tracks
        for m, metric in enumerate(self.metric_names):
            name = metric.lower()
            for s, source in enumerate(pl_module.sources):
                pl_module.log(f"val/{name}_{source}", float(sisec18[s, m]), sync_dist=False)
            pl_module.log(f"val/{name}", float(np.mean(sisec18[:, m])), sync_dist=False)

    def _log_media(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        estimate: torch.Tensor,
        track: int,
        sample_rate: int,
    ) -> None:
        """Audio excerpts ([S, C, T] estimate) and a spectrogram figure for media loggers."""
        length = min(estimate.shape[-1], round(self.media_seconds * sample_rate))
        excerpt = estimate[..., :length].detach().float().cpu()
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for s, source in enumerate(pl_module.sources):
                    logger.experiment.add_audio(
                        f"val_audio/track{track}_{source}",
                        excerpt[s].mean(0, keepdim=True).clamp(-1, 1),  # mono: TB takes [1, T]
                        step,
                        sample_rate=sample_rate,
                    )
                logger.experiment.add_figure(
                    f"val_spectrogram/track{track}", _spectrogram_figure(excerpt, pl_module), step
                )
            elif isinstance(logger, WandbLogger):
                logger.log_audio(
                    key=f"val_audio/track{track}",
                    audios=[excerpt[s].T.numpy() for s in range(len(pl_module.sources))],
                    sample_rate=[sample_rate] * len(pl_module.sources),
                    caption=list(pl_module.sources),
                    step=step,
                )
                logger.log_image(
                    key=f"val_spectrogram/track{track}",
                    images=[_figure_png(_spectrogram_figure(excerpt, pl_module))],
                    step=step,
                )


def _spectrogram_figure(excerpt: torch.Tensor, pl_module: L.LightningModule):
    """Log-magnitude spectrogram of each estimated source (channels averaged)."""
    from matplotlib.figure import Figure

    sources = pl_module.sources
    figure = Figure(figsize=(8, 2 * len(sources)))
    axes = figure.subplots(len(sources), 1, squeeze=False)[:, 0]
    window = torch.hann_window(2048)
    for ax, source, audio in zip(axes, sources, excerpt, strict=True):
        spec = torch.stft(audio.mean(0), 2048, 512, window=window, return_complex=True).abs()
        ax.imshow(20 * torch.log10(spec + 1e-6).numpy(), origin="lower", aspect="auto",
                  vmin=-80, vmax=40, cmap="magma")  # fmt: skip
        ax.set_ylabel(source)
    figure.tight_layout()
    return figure


def _figure_png(figure) -> np.ndarray:
    """A matplotlib Figure as an RGB array (wandb takes arrays without pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    buffer.seek(0)
    from matplotlib.image import imread

    return (imread(buffer, format="png")[..., :3] * 255).astype(np.uint8)

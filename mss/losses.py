"""Training loss: weighted L1 on waveforms plus a multi-resolution STFT loss, per source.

The seed report's recipe: ``0.85 * L1 + 0.15 * MRSTFT`` (auraloss, FFT sizes 512/1024/2048),
with drums and bass weighted 1.2. The loss lives here, never inside a model's ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import auraloss
import torch
from torch import Tensor, nn

# The seed report's weights; read-only so the shared default cannot be mutated.
SEED_SOURCE_WEIGHTS: Mapping[str, float] = MappingProxyType({"drums": 1.2, "bass": 1.2})


class SeparationLoss(nn.Module):
    """``l1_weight * L1 + stft_weight * MRSTFT`` per source, combined with source weights.

    For each source ``s`` the unweighted loss is

        ``L_s = l1_weight * mean|est_s - ref_s| + stft_weight * MRSTFT(est_s, ref_s)``

    and ``forward`` returns ``sum_s w_s L_s / sum_s w_s`` (``normalize_weights=True``, the
    default) or ``sum_s w_s L_s``. Normalising keeps the loss on the scale of one source
    whatever the number of sources or their weights: with every weight 1 it is the mean over
    sources, and its L1 part equals ``torch.nn.functional.l1_loss(est, ref)``.

    Stereo: auraloss flattens ``[B, C, T]`` to ``[B * C, T]``, so each channel of each batch
    item is an independent STFT signal. The log-magnitude term is a mean over all of them;
    the spectral-convergence term is ``||Y - X||_F / ||Y||_F`` over the whole batch of that
    source, which keeps chunks where the source is silent from dividing by zero as long as
    it is heard somewhere in the batch. (If a source is silent in the *whole* batch that
    term becomes large, ``||X|| / ||eps||``; it pushes the estimate towards silence, which is
    the right direction, but at thousands of times the scale of every other term. So a source
    whose reference RMS over the batch is at most ``silence_threshold`` gets no STFT term:
    the L1 term alone pulls its estimate to silence.)

    Args:
        sources (Sequence[str]): stem names, in the order of dim 1 of ``est`` and ``ref``.
        l1_weight (float): weight of the waveform L1 term.
        stft_weight (float): weight of the multi-resolution STFT term (0 disables it, and
            with it the minimum input length).
        fft_sizes (Sequence[int]): FFT sizes of the STFT resolutions.
        hop_sizes (Sequence[int] | None): hops; ``None`` = ``fft_size // 4`` each.
        win_lengths (Sequence[int] | None): window lengths; ``None`` = ``fft_size`` each.
        source_weights (Mapping[str, float] | None): weight per source *name* (drums and
            bass 1.2 by default; ``None`` or ``{}`` = all 1.0). Names not given weigh 1.0
            and names that are not in ``sources`` are ignored, so one config serves any list
            of stems.
        normalize_weights (bool): divide by the sum of the weights (see above).
        w_sc (float): auraloss spectral-convergence weight inside each resolution.
        w_log_mag (float): auraloss log-magnitude weight inside each resolution.
        w_lin_mag (float): auraloss linear-magnitude weight inside each resolution.
        silence_threshold (float): reference RMS (over the batch, per source) at or below
            which the STFT term of that source is dropped; -80 dBFS by default.
    """

    def __init__(
        self,
        sources: Sequence[str],
        l1_weight: float = 0.85,
        stft_weight: float = 0.15,
        fft_sizes: Sequence[int] = (512, 1024, 2048),
        hop_sizes: Sequence[int] | None = None,
        win_lengths: Sequence[int] | None = None,
        source_weights: Mapping[str, float] | None = SEED_SOURCE_WEIGHTS,
        normalize_weights: bool = True,
        w_sc: float = 1.0,
        w_log_mag: float = 1.0,
        w_lin_mag: float = 0.0,
        silence_threshold: float = 1e-4,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("SeparationLoss needs at least one source name.")
        fft_sizes = [int(n) for n in fft_sizes]
        hop_sizes = (
            [n // 4 for n in fft_sizes] if hop_sizes is None else [int(h) for h in hop_sizes]
        )
        win_lengths = list(fft_sizes) if win_lengths is None else [int(w) for w in win_lengths]
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths):
            raise ValueError(
                f"fft_sizes, hop_sizes and win_lengths must have the same length, got "
                f"{fft_sizes}, {hop_sizes}, {win_lengths}."
            )
        if stft_weight and not fft_sizes:
            raise ValueError("stft_weight is non-zero but fft_sizes is empty.")
        self.sources = list(sources)
        self.l1_weight = float(l1_weight)
        self.stft_weight = float(stft_weight)
        self.normalize_weights = normalize_weights
        self.silence_threshold = float(silence_threshold)
        self.min_length = max(fft_sizes) // 2 + 1 if stft_weight else 1

        source_weights = dict(source_weights or {})
        weights = torch.tensor(
            [float(source_weights.get(name, 1.0)) for name in self.sources], dtype=torch.float32
        )
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"Source weights must be >= 0 with a positive sum, got {weights}.")
        # A buffer so it follows the module to the loss' device; not persistent so a
        # checkpoint does not pin it (the config is the source of truth).
        self.register_buffer("weights", weights, persistent=False)

        self.stft = (
            auraloss.freq.MultiResolutionSTFTLoss(
                fft_sizes=fft_sizes,
                hop_sizes=hop_sizes,
                win_lengths=win_lengths,
                w_sc=w_sc,
                w_log_mag=w_log_mag,
                w_lin_mag=w_lin_mag,
            )
            if stft_weight
            else None
        )

    def _check(self, est: Tensor, ref: Tensor) -> None:
        if est.shape != ref.shape:
            raise ValueError(
                f"Estimate and reference shapes differ: {tuple(est.shape)} vs {tuple(ref.shape)}."
            )
        if est.ndim != 4 or est.shape[1] != len(self.sources):
            raise ValueError(
                "Expected 4D tensors with dimensions (batch, source, channel, frames) and "
                f"{len(self.sources)} sources {self.sources}. Found: {tuple(est.shape)}"
            )
        if est.shape[-1] < self.min_length:
            raise ValueError(
                f"The STFT loss needs at least {self.min_length} frames (largest FFT size "
                f"{2 * (self.min_length - 1)}), got {est.shape[-1]}."
            )

    def per_source(self, est: Tensor, ref: Tensor) -> Tensor:
        """Unweighted loss of each source.

        Args:
            est (Tensor): [shape=(batch, sources, channels, frames)] estimates.
            ref (Tensor): [shape=(batch, sources, channels, frames)] references.

        Returns:
            Tensor: [shape=(sources,)] ``L_s`` for each source, in the order of ``sources``.
        """
        self._check(est, ref)
        # Loss in float32 even under mixed precision: log-magnitudes and norms of fp16 STFTs
        # under/overflow.
        est = est.float()
        ref = ref.float()
        losses = self.l1_weight * (est - ref).abs().mean(dim=(0, 2, 3))
        if self.stft is not None:
            stft = torch.stack(
                [
                    # auraloss views [B, C, T] as [B * C, T]: needs contiguous slices.
                    self.stft(est[:, s].contiguous(), ref[:, s].contiguous())
                    for s in range(len(self.sources))
                ]
            )
            # torch.where rather than an `if`: no host sync, and the dropped branch is finite
            # (auraloss floors magnitudes at 1e-4), so it passes no NaN into the gradient.
            rms = ref.pow(2).mean(dim=(0, 2, 3)).sqrt()
            stft = torch.where(rms > self.silence_threshold, stft, torch.zeros_like(stft))
            losses = losses + self.stft_weight * stft
        return losses

    def forward(self, est: Tensor, ref: Tensor) -> Tensor:
        """Weighted loss over sources (a scalar); shapes as in :meth:`per_source`."""
        weights = self.weights.to(est.device)
        total = (weights * self.per_source(est, ref)).sum()
        if self.normalize_weights:
            total = total / weights.sum()
        return total

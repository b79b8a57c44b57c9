"""Training loss: weighted L1 on waveforms plus a multi-resolution STFT loss, per source.

Two forms of the STFT term (``stft_form``):

- ``"complex"`` (``loss=l1_mrstft``): ``mean |STFT(est - ref)|`` on the complex spectrogram
  of the error, averaged over the resolutions (Hann windows, hop n_fft / 4, ``normalized``
  STFT). One STFT of the error per resolution instead of two; linear in the signal like the
  L1 term, zero only when the waveform error is zero, and sensitive to phase and level, which
  SDR measures. This is the form of the strong MUSDB codebases (lucidrains' BS-RoFormer sums
  ``mean |STFT(est) - STFT(ref)|`` over resolutions).
- ``"auraloss"`` (``loss=l1_auraloss``): the seed report's auraloss spectral convergence + log
  magnitude, ``0.85 * L1 + 0.15 * MRSTFT``; it ignores phase, and at MUSDB levels its log
  term is about 100 times the L1 term (BENCHMARKS.md). Kept to reproduce that recipe.

Drums and bass weigh 1.2 by default. The loss lives here, never inside a model's ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import auraloss
import torch
from torch import Tensor, nn

from mss.stft_magnitude import stft_magnitude_sum

# The seed report's weights; read-only so the shared default cannot be mutated.
SEED_SOURCE_WEIGHTS: Mapping[str, float] = MappingProxyType({"drums": 1.2, "bass": 1.2})


STFT_FORMS = ("complex", "auraloss")


class SeparationLoss(nn.Module):
    """``l1_weight * L1 + stft_weight * MRSTFT`` per source, combined with source weights.

    For each source ``s`` the unweighted loss is

        ``L_s = l1_weight * mean|est_s - ref_s| + stft_weight * MRSTFT(est_s, ref_s)``

    and ``forward`` returns ``sum_s w_s L_s / sum_s w_s`` (``normalize_weights=True``, the
    default) or ``sum_s w_s L_s``. Normalising keeps the loss on the scale of one source
    whatever the number of sources or their weights: with every weight 1 it is the mean over
    sources, and its L1 part equals ``torch.nn.functional.l1_loss(est, ref)``.

    ``stft_form="complex"``: ``MRSTFT(est_s, ref_s)`` is the mean over resolutions of
    ``mean |STFT(est_s - ref_s)|`` over batch, channels, bins and frames (torch.stft, Hann
    window, ``normalized=True``), so a silent source needs no special case.

    ``stft_form="auraloss"`` (this class's defaults are the seed report's recipe). Stereo:
    auraloss flattens ``[B, C, T]`` to ``[B * C, T]``, so each channel of each batch
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
        stft_form (str): ``"complex"`` or ``"auraloss"`` (see the module docstring).
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
        silence_threshold (float): auraloss form: reference RMS (over the batch, per source)
            at or below which the STFT term of that source is dropped; -80 dBFS by default.
        resolutions_per_step (int | None): complex form: in training, the STFT term of each
            step uses this many of the resolutions, drawn at random without replacement, and
            averages them; ``None`` = all. The mean over the draws is the full term, so the
            gradient is the full term's on average, at a fraction of its cost. In eval mode
            (validation) every resolution counts. The draws come from a generator of their own
            (``resolution_seed``), so the data's random chunks are the same as without them;
            every DDP rank draws the same resolutions, and a resumed run starts the draws anew.
        resolution_seed (int): seed of that generator.
    """

    def __init__(
        self,
        sources: Sequence[str],
        l1_weight: float = 0.85,
        stft_weight: float = 0.15,
        stft_form: str = "auraloss",
        fft_sizes: Sequence[int] = (512, 1024, 2048),
        hop_sizes: Sequence[int] | None = None,
        win_lengths: Sequence[int] | None = None,
        source_weights: Mapping[str, float] | None = SEED_SOURCE_WEIGHTS,
        normalize_weights: bool = True,
        w_sc: float = 1.0,
        w_log_mag: float = 1.0,
        w_lin_mag: float = 0.0,
        silence_threshold: float = 1e-4,
        resolutions_per_step: int | None = None,
        resolution_seed: int = 0,
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
        if stft_form not in STFT_FORMS:
            raise ValueError(f"stft_form must be one of {STFT_FORMS}, got {stft_form!r}.")
        self.stft_form = stft_form
        self.resolutions = list(zip(fft_sizes, hop_sizes, win_lengths, strict=True))
        if resolutions_per_step is not None:
            if stft_form != "complex":
                raise ValueError("resolutions_per_step needs stft_form='complex'.")
            if not 1 <= resolutions_per_step <= len(self.resolutions):
                raise ValueError(
                    f"resolutions_per_step must be in 1..{len(self.resolutions)} (the number of "
                    f"fft_sizes), got {resolutions_per_step}."
                )
        self.resolutions_per_step = resolutions_per_step
        self.resolution_generator = torch.Generator().manual_seed(int(resolution_seed))
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
            if stft_weight and stft_form == "auraloss"
            else None
        )
        for n_fft, _, win_length in self.resolutions:
            # periodic Hann, as torch.hann_window and auraloss
            self.register_buffer(f"window_{n_fft}_{win_length}", torch.hann_window(win_length),
                                 persistent=False)  # fmt: skip

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

    def terms(self, est: Tensor, ref: Tensor) -> tuple[Tensor, Tensor | None]:
        """Unweighted L1 and STFT terms of each source, before ``l1_weight``/``stft_weight``.

        Args:
            est (Tensor): [shape=(batch, sources, channels, frames)] estimates.
            ref (Tensor): [shape=(batch, sources, channels, frames)] references.

        Returns:
            (Tensor, Tensor | None): [shape=(sources,)] each; the STFT terms are None when
            ``stft_weight`` is 0.
        """
        self._check(est, ref)
        # Loss in float32 even under mixed precision: STFT magnitudes, log-magnitudes and
        # norms of fp16 under/overflow.
        with torch.autocast(est.device.type, enabled=False):
            est = est.float()
            ref = ref.float()
            l1 = (est - ref).abs().mean(dim=(0, 2, 3))
            if not self.stft_weight:
                return l1, None
            if self.stft_form == "complex":
                return l1, self._complex_stft(est - ref)
            return l1, self._auraloss_stft(est, ref)

    def _complex_stft(self, error: Tensor) -> Tensor:
        """Mean over resolutions of mean |STFT(error)| per source; error [B, S, C, T]."""
        batch, sources, channels, frames = error.shape
        flat = error.transpose(0, 1).reshape(sources * batch * channels, frames)
        total = error.new_zeros(sources)
        resolutions = self.step_resolutions()
        for n_fft, hop, win_length in resolutions:
            window = getattr(self, f"window_{n_fft}_{win_length}")
            sums = stft_magnitude_sum(flat, n_fft, hop, window).reshape(sources, -1).sum(dim=1)
            # torch.stft's shape with center=True: 1 + frames // hop frames of n_fft // 2 + 1 bins
            count = batch * channels * (1 + frames // hop) * (n_fft // 2 + 1)
            total = total + sums / count
        return total / len(resolutions)

    def step_resolutions(self) -> list[tuple[int, int, int]]:
        """The (n_fft, hop, win_length) of this step's STFT term: ``resolutions_per_step`` of
        them drawn at random in training, all of them otherwise."""
        if self.resolutions_per_step is None or not self.training:
            return self.resolutions
        draw = torch.randperm(len(self.resolutions), generator=self.resolution_generator)
        return [self.resolutions[i] for i in sorted(draw[: self.resolutions_per_step].tolist())]

    def _auraloss_stft(self, est: Tensor, ref: Tensor) -> Tensor:
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
        return torch.where(rms > self.silence_threshold, stft, torch.zeros_like(stft))

    def per_source(self, est: Tensor, ref: Tensor) -> Tensor:
        """Unweighted loss of each source, ``[S]``: ``l1_weight * L1 + stft_weight * STFT``."""
        l1, stft = self.terms(est, ref)
        losses = self.l1_weight * l1
        return losses if stft is None else losses + self.stft_weight * stft

    def components(self, est: Tensor, ref: Tensor) -> dict[str, Tensor]:
        """The loss and its two terms, each combined over sources like the loss (for logging:
        ``loss = l1_weight * l1 + stft_weight * stft``)."""
        l1, stft = self.terms(est, ref)
        out = {"l1": self._combine(l1)}
        loss = self.l1_weight * out["l1"]
        if stft is not None:
            out["stft"] = self._combine(stft)
            loss = loss + self.stft_weight * out["stft"]
        out["loss"] = loss
        return out

    def _combine(self, per_source: Tensor) -> Tensor:
        weights = self.weights.to(per_source.device)
        total = (weights * per_source).sum()
        return total / weights.sum() if self.normalize_weights else total

    def forward(self, est: Tensor, ref: Tensor) -> Tensor:
        """Weighted loss over sources (a scalar); shapes as in :meth:`terms`."""
        return self._combine(self.per_source(est, ref))

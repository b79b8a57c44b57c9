"""HPSS + band-wise NMF: the seed report's second DSP baseline (its section 3.2).

The spectrogram is cut into three frequency bands, each band's magnitude is
factorised by NMF, and every NMF component is shared between the drums and one
harmonic stem by rules that HPSS (and, in stereo, the panning) guide:

========  =====================  ============================================
band      default range (Hz)     harmonic components go to
========  =====================  ============================================
low       0 - ``low_band_max``   bass  (kick drum and bass guitar live here;
          (250)                  HPSS separates the two)
mid       250 - ``high_band_min``  vocals for the ``vocals_components``
          (4000)                 spectrally sparsest components, other for
                                 the rest (the voice's fundamentals and
                                 formants; one sung note = one sparse comb)
high      4000 - Nyquist         other (cymbals are percussive; what is
                                 harmonic up there is mostly instruments)
========  =====================  ============================================

The percussive share of a component is the part of its energy under the HPSS
percussive mask, ``p_j = sum(P_mask * V_j) / sum(V_j)`` with ``V_j = w_j h_j``
its reconstruction: ``p_j V_j`` goes to the drums (in every band) and
``(1 - p_j) V_j`` to the harmonic stem of the table. A soft split rather than a
threshold: a component that mixes a kick with a bass note is common in the low
band, and a threshold would hand all of it to one stem.

In the mid band, the vocal components are those whose spectral template
``w_j`` is sparsest (Hoyer sparsity): a monophonic voice gives NMF templates
that are single harmonic combs, chords and pads give denser ones. On the
benchmark's train tracks this ranks well (correlation 0.61 between a
template's sparsity and the true vocal share of the component's energy, over
72 components), while the stereo centre balance, the usual karaoke cue, did
not (-0.61: reverb spreads the voice); a fixed count rather than a threshold
means the vocals are never left empty.

Each stem's magnitude model is the sum of its shares of the reconstructions;
power soft masks ``Y_s^p / sum_s' Y_s'^p`` over the full spectrogram are
applied to the mixture STFT and inverted with the mixture phase. Bins no
component explains (all ``Y_s = 0``) go to ``other``, so the masks always sum
to one and the stems sum to the mixture up to iSTFT rounding. Nothing is
peak-normalised: the metric needs the estimates' true level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mss.models.dsp._base import STEMS, DSPSeparator

BANDS = ("low", "mid", "high")


class HPSSNMF(DSPSeparator):
    """HPSS-guided band-wise NMF separator (no parameters; see the module docstring).

    Args:
        sources (Sequence[str]): ``drums``, ``bass``, ``other``, ``vocals`` in output order.
        sample_rate (int): sample rate of the audio.
        audio_channels (int): channels of the mixture and of each stem.
        n_fft (int): STFT size.
        hop_length (int): STFT hop in samples.
        channel_masks (str): ``"shared"`` (one NMF and one mask set on the mean
            magnitude of the channels) or ``"per_channel"`` (NMF per channel).
        hpss_kernel_size (int | tuple[int, int]): HPSS median filter lengths.
        hpss_margin (float | tuple[float, float]): HPSS margins (>= 1).
        hpss_power (float): exponent of the HPSS soft masks.
        low_band_max (float): upper edge of the low band in Hz.
        high_band_min (float): lower edge of the high band in Hz (below Nyquist).
        n_components (Sequence[int]): NMF components of the low, mid and high band.
        nmf_beta_loss (str): ``"kullback-leibler"`` (suits magnitude spectra) or
            ``"frobenius"``; solved with multiplicative updates (:func:`nmf`).
        nmf_max_iter (int): NMF iterations per band (a fixed count).
        seed (int): NMF initialisation seed, so results are reproducible.
        vocals_components (int): how many mid-band components (the spectrally
            sparsest) model the vocals; at most ``n_components[1]``.
        mask_power (float): exponent of the final soft masks.
    """

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int,
        audio_channels: int = 2,
        n_fft: int = 4096,
        hop_length: int = 1024,
        channel_masks: str = "shared",
        hpss_kernel_size: int | Sequence[int] = 31,
        hpss_margin: float | Sequence[float] = 1.0,
        hpss_power: float = 2.0,
        low_band_max: float = 250.0,
        high_band_min: float = 4000.0,
        n_components: Sequence[int] = (4, 12, 6),
        nmf_beta_loss: str = "kullback-leibler",
        nmf_max_iter: int = 100,
        seed: int = 0,
        vocals_components: int = 8,
        mask_power: float = 2.0,
    ) -> None:
        super().__init__(
            sources,
            sample_rate,
            audio_channels,
            n_fft,
            hop_length,
            channel_masks,
            hpss_kernel_size,
            hpss_margin,
            hpss_power,
        )
        if not 0 < low_band_max < high_band_min < self.nyquist:
            raise ValueError(
                "need 0 < low_band_max < high_band_min < Nyquist (sample_rate / 2 = "
                f"{self.nyquist:g} Hz). Found: low_band_max={low_band_max}, "
                f"high_band_min={high_band_min}"
            )
        self.low_band_max = float(low_band_max)
        self.high_band_min = float(high_band_min)
        components = [int(c) for c in n_components]
        if len(components) != len(BANDS) or min(components) < 1:
            raise ValueError(
                f"n_components must be {len(BANDS)} positive ints (low, mid, high band). "
                f"Found: {list(n_components)}"
            )
        self.n_components = tuple(components)
        if nmf_beta_loss not in ("kullback-leibler", "frobenius"):
            raise ValueError(
                f"nmf_beta_loss must be 'kullback-leibler' or 'frobenius'. Found: {nmf_beta_loss!r}"
            )
        if int(nmf_max_iter) < 1:
            raise ValueError(f"nmf_max_iter must be at least 1. Found: {nmf_max_iter}")
        self.nmf_beta_loss = nmf_beta_loss
        self.nmf_max_iter = int(nmf_max_iter)
        self.seed = int(seed)
        if not 0 <= int(vocals_components) <= self.n_components[1]:
            raise ValueError(
                "vocals_components must be in [0, n_components[1]] = "
                f"[0, {self.n_components[1]}]. Found: {vocals_components}"
            )
        self.vocals_components = int(vocals_components)
        if not mask_power > 0:
            raise ValueError(f"mask_power must be positive. Found: {mask_power}")
        self.mask_power = float(mask_power)

    def band_slices(self) -> dict[str, slice]:
        """STFT bins of each band (contiguous, covering every bin once)."""
        freqs = self.frequencies()
        low_end = int(np.searchsorted(freqs, self.low_band_max, side="left"))
        high_start = max(int(np.searchsorted(freqs, self.high_band_min, side="left")), low_end)
        return {
            "low": slice(0, low_end),
            "mid": slice(low_end, high_start),
            "high": slice(high_start, len(freqs)),
        }

    def separate_track(self, mix: Tensor) -> dict[str, Tensor]:
        """[C, T] -> {stem: [C, T]}; see the module docstring for the rules."""
        length = mix.shape[-1]
        spec = self.stft(mix)  # [C, F, N]
        mag = self.mask_magnitude(spec)  # [1 or C, F, N]
        _, mask_p = self.hpss(mag)
        models = np.stack(
            [self.stem_models(m, p) for m, p in zip(mag, mask_p, strict=True)]
        )  # [1 or C, len(STEMS), F, N]
        masks = power_masks(models, self.mask_power, fallback=STEMS.index("other"))
        masks = torch.from_numpy(masks).to(mix.dtype)
        stems = self.istft(spec[:, None] * masks, length)  # [C, len(STEMS), T]
        return {name: stems[:, i] for i, name in enumerate(STEMS)}

    def stem_models(self, mag: np.ndarray, mask_p: np.ndarray) -> np.ndarray:
        """NMF per band and component assignment: magnitude models [4, F, N].

        Args:
            mag (np.ndarray): magnitudes [F, N].
            mask_p (np.ndarray): HPSS percussive mask [F, N].

        Returns:
            np.ndarray: [len(STEMS), F, N] each stem's share of the components.
        """
        models = np.zeros((len(STEMS),) + mag.shape, dtype=mag.dtype)
        for band, rank in zip(BANDS, self.n_components, strict=True):
            rows = self.band_slices()[band]
            band_mag = mag[rows]
            if band_mag.size == 0 or not band_mag.any():
                continue
            W, H = self.nmf_factors(band_mag, rank)
            vocal = np.zeros(W.shape[1], dtype=bool)
            if band == "mid" and self.vocals_components:
                # stable sort: ties (e.g. degenerate templates) resolve by component index
                order = np.argsort(-hoyer_sparsity(W, axis=0), kind="stable")
                vocal[order[: self.vocals_components]] = True
            for j in range(W.shape[1]):
                part = np.outer(W[:, j], H[j])  # [F_band, N]
                energy = part.sum()
                if energy <= 0:
                    continue
                percussive = (part * mask_p[rows]).sum() / energy
                models[STEMS.index("drums"), rows] += percussive * part
                harmonic = {"low": "bass", "high": "other"}.get(band)
                harmonic = harmonic or ("vocals" if vocal[j] else "other")
                models[STEMS.index(harmonic), rows] += (1 - percussive) * part
        return models

    def nmf_factors(self, band_mag: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """NMF of one band's magnitudes [F_band, N]: ``W`` [F_band, r], ``H`` [r, N]."""
        rank = max(1, min(rank, *band_mag.shape))
        V = torch.from_numpy(np.ascontiguousarray(band_mag))
        W, H = nmf(V, rank, self.nmf_max_iter, self.nmf_beta_loss, self.seed)
        return W.numpy(), H.numpy()


def hoyer_sparsity(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Hoyer's sparsity in [0, 1] along ``axis``: 1 for one non-zero entry, 0 for a flat vector.

    ``(sqrt(n) - |x|_1 / |x|_2) / (sqrt(n) - 1)``; an all-zero or length-1 vector scores 0.
    """
    n = x.shape[axis]
    if n < 2:
        return np.zeros(np.delete(x.shape, axis))
    l1 = np.abs(x).sum(axis=axis)
    l2 = np.sqrt((x.astype(np.float64) ** 2).sum(axis=axis))
    ratio = np.where(l2 > 0, l1 / np.where(l2 > 0, l2, 1), np.sqrt(n))
    return (np.sqrt(n) - ratio) / (np.sqrt(n) - 1)


@contextlib.contextmanager
def _single_threaded():
    """Run torch ops on one thread, then restore the thread count.

    NMF is hundreds of small matrix ops in a row; synchronising threads for each
    costs more than it saves (10x slower with 2 threads on a busy 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nmf(
    V: Tensor, rank: int, n_iter: int, beta_loss: str = "kullback-leibler", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Non-negative matrix factorisation ``V ~ W H`` by multiplicative updates.

    Lee & Seung's updates for the generalised Kullback-Leibler divergence or the
    Frobenius norm, with scikit-learn's random initialisation (uniform, scaled to
    the mean of ``V``) from a seeded generator, so results are reproducible. A
    fixed iteration count instead of a tolerance keeps the run time predictable;
    written with torch matrix products because scikit-learn's KL solver took
    about ten times longer on spectrogram bands.

    Args:
        V (Tensor): non-negative [shape=(F, N)].
        rank (int): number of components.
        n_iter (int): iterations.
        beta_loss (str): ``"kullback-leibler"`` or ``"frobenius"``.
        seed (int): initialisation seed.

    Returns:
        (Tensor, Tensor): ``W`` [shape=(F, rank)] and ``H`` [shape=(rank, N)].
    """
    # Work on V scaled to unit mean and keep the factors above a floor: multiplicative
    # updates drive unused entries towards zero, and denormal floats are ~100x slower.
    level = V.mean()
    if level <= 0:
        return torch.zeros(V.shape[0], rank, dtype=V.dtype), torch.zeros(
            rank, V.shape[1], dtype=V.dtype
        )
    V = V / level
    eps, floor = 1e-12, 1e-12
    generator = torch.Generator().manual_seed(seed)
    scale = (1.0 / rank) ** 0.5
    # Drawn in float64 whatever V's precision, so float32 and float64 inputs start alike.
    W = (scale * torch.rand(V.shape[0], rank, generator=generator, dtype=torch.float64)).to(V.dtype)
    H = (scale * torch.rand(rank, V.shape[1], generator=generator, dtype=torch.float64)).to(V.dtype)
    W += floor
    H += floor
    with _single_threaded():
        _multiplicative_updates(V, W, H, n_iter, beta_loss, eps, floor)
    W *= level
    return W, H


def _multiplicative_updates(V, W, H, n_iter, beta_loss, eps, floor) -> None:
    """Lee & Seung's updates of ``W`` and ``H`` in place."""
    for _ in range(n_iter):
        if beta_loss == "kullback-leibler":
            H *= (W.T @ (V / (W @ H + eps))) / (W.sum(0)[:, None] + eps)
            H.clamp_(min=floor)
            W *= ((V / (W @ H + eps)) @ H.T) / (H.sum(1)[None, :] + eps)
            W.clamp_(min=floor)
        else:
            H *= (W.T @ V) / (W.T @ W @ H + eps)
            H.clamp_(min=floor)
            W *= (V @ H.T) / (W @ (H @ H.T) + eps)
            W.clamp_(min=floor)


def power_masks(models: np.ndarray, power: float, fallback: int) -> np.ndarray:
    """Soft masks ``Y_s^p / sum_s Y_s^p`` along axis 1; all-zero bins go to ``fallback``.

    Args:
        models (np.ndarray): non-negative magnitude models [shape=(M, S, F, N)].

    Returns:
        np.ndarray: masks of the same shape, summing to 1 over the stem axis.
    """
    # Divide by the per-bin maximum first so that large powers cannot overflow.
    peak = models.max(axis=1, keepdims=True)
    empty = peak <= 0
    scaled = np.where(empty, 0, models / np.where(empty, 1, peak)) ** power
    masks = scaled / np.where(empty, 1, scaled.sum(axis=1, keepdims=True))
    masks[:, fallback][empty[:, 0]] = 1.0
    return masks

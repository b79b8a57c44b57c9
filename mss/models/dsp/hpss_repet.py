"""HPSS + REPET-SIM: the seed report's first DSP baseline (its section 3.1).

One track goes through these steps (``X`` the mixture STFT, masks computed on
the mean magnitude of the channels, or per channel):

1. HPSS (librosa's median-filtering soft masks, margin and power configurable)
   splits ``X`` into a harmonic part ``H`` and a percussive part ``P``.
2. drums = iSTFT(``P``) with the bins of the ``drums_band`` (300-3000 Hz by
   default, where voice, guitars and keys live) scaled by ``drums_band_gain``.
3. bass = zero-phase Butterworth low-pass (``sosfiltfilt``, 200 Hz, order 4 by
   default) of iSTFT(``H``).
4. vocals = REPET-SIM foreground of the harmonic part *above* the bass: ``H``
   weighted by ``1 - |B(f)|^2``, where ``|B(f)|^2`` is the magnitude response of
   that same forward-backward filter, so the low end that went to the bass is
   not counted twice. Each frame's repeating background is the median of its
   most similar frames (cosine) at least ``repet_width`` seconds away
   (:mod:`mss.models.dsp.repet_sim`); a soft mask with margin
   ``repet_margin`` keeps what the background does not explain.
5. other = mixture - drums - bass - vocals, so the four stems sum to the
   mixture exactly (to float rounding).

Nothing is peak-normalised: the metric needs the estimates' true level.
Whole tracks work best: REPET-SIM needs the repetitions, which a short chunk
does not contain (a chunk shorter than about ``2 * repet_width`` gets no vocals).
"""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np
import scipy.signal
import torch
from torch import Tensor

from mss.models.dsp._base import DSPSeparator, _float_pair
from mss.models.dsp.repet_sim import repet_sim_masks


def butter_lowpass(cutoff: float, order: int, sample_rate: int) -> np.ndarray:
    """Second-order sections of a Butterworth low-pass; checks the cutoff against Nyquist."""
    nyquist = sample_rate / 2
    if not 0 < cutoff < nyquist:
        raise ValueError(
            f"bass_cutoff must be above 0 and below the Nyquist frequency sample_rate / 2 = "
            f"{nyquist:g} Hz. Found: {cutoff}"
        )
    if int(order) < 1:
        raise ValueError(f"bass_order must be at least 1. Found: {order}")
    return scipy.signal.butter(int(order), cutoff, btype="lowpass", fs=sample_rate, output="sos")


def zero_phase_filter(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sosfiltfilt`` along the last axis, with the padding shortened for short inputs.

    scipy pads by a few filter lengths and refuses inputs shorter than that; the
    separator contract accepts any length, so short inputs get less padding.
    """
    if x.shape[-1] < 2:
        # A single sample has no frequency content to filter: filtfilt of a
        # constant through a unit-DC-gain low-pass is that constant.
        return x.copy()
    ntaps = 2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())
    padlen = min(3 * int(ntaps), x.shape[-1] - 1)
    return scipy.signal.sosfiltfilt(sos, x, axis=-1, padlen=padlen)


class HPSSRepet(DSPSeparator):
    """HPSS + REPET-SIM separator (no parameters; see the module docstring).

    Args:
        sources (Sequence[str]): ``drums``, ``bass``, ``other``, ``vocals`` in output order.
        sample_rate (int): sample rate of the audio.
        audio_channels (int): channels of the mixture and of each stem.
        n_fft (int): STFT size; 4096 at 44.1 kHz has the time/frequency resolution
            of librosa's 2048 at 22.05 kHz, the setting of its REPET-SIM example.
        hop_length (int): STFT hop in samples.
        channel_masks (str): ``"shared"`` (masks from the mean magnitude of the
            channels) or ``"per_channel"``.
        hpss_kernel_size (int | tuple[int, int]): median filter lengths (harmonic
            along time in frames, percussive along frequency in bins).
        hpss_margin (float | tuple[float, float]): HPSS margins (>= 1); above 1 some
            energy is neither harmonic nor percussive and ends up in ``other``.
        hpss_power (float): exponent of the HPSS soft masks.
        drums_band (tuple[float, float]): band in Hz attenuated in the drums.
        drums_band_gain (float): gain applied to that band, in [0, 1] (1 = none).
        bass_cutoff (float): low-pass cutoff in Hz, below Nyquist.
        bass_order (int): Butterworth order (applied twice, forward and backward).
        repet_width (float): minimum distance in seconds between a frame and the
            frames that model its repeating background.
        repet_k (int | None): neighbours per frame; ``None`` = librosa's default
            ``2 * ceil(sqrt(frames - 2 * width + 1))``.
        repet_neighbors (str): ``"librosa"`` (librosa's ``nn_filter`` semantics) or
            ``"nearest"`` (the k most similar frames), see :mod:`~mss.models.dsp.repet_sim`.
        repet_margin (float): foreground margin of the vocal soft mask. librosa's
            example uses 10 (a bin is vocal only where it clearly exceeds the
            background); 1 scored 3 dB higher on vocals on the benchmark's train
            tracks, so it is the default.
        repet_power (float): exponent of the vocal soft mask.
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
        drums_band: Sequence[float] = (300.0, 3000.0),
        drums_band_gain: float = 0.6,
        bass_cutoff: float = 200.0,
        bass_order: int = 4,
        repet_width: float = 2.0,
        repet_k: int | None = None,
        repet_neighbors: str = "librosa",
        repet_margin: float = 1.0,
        repet_power: float = 2.0,
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
        low, high = _float_pair(drums_band, "drums_band")
        if not 0 <= low < high:
            raise ValueError(
                f"drums_band must be [low, high] with 0 <= low < high. Found: {drums_band}"
            )
        if not 0 <= drums_band_gain <= 1:
            raise ValueError(f"drums_band_gain must be in [0, 1]. Found: {drums_band_gain}")
        self.drums_band = (low, high)
        self.drums_band_gain = float(drums_band_gain)
        self.bass_cutoff = float(bass_cutoff)
        self.bass_order = int(bass_order)
        self._sos = butter_lowpass(self.bass_cutoff, self.bass_order, self.sample_rate)
        if not repet_width > 0:
            raise ValueError(f"repet_width must be positive (seconds). Found: {repet_width}")
        if repet_k is not None and int(repet_k) < 1:
            raise ValueError(f"repet_k must be at least 1 or null. Found: {repet_k}")
        if repet_neighbors not in ("librosa", "nearest"):
            raise ValueError(
                f"repet_neighbors must be 'librosa' or 'nearest'. Found: {repet_neighbors!r}"
            )
        if not repet_margin > 0 or not repet_power > 0:
            raise ValueError(
                f"repet_margin and repet_power must be positive. Found: {repet_margin}, "
                f"{repet_power}"
            )
        self.repet_width = float(repet_width)
        self.repet_k = None if repet_k is None else int(repet_k)
        self.repet_neighbors = repet_neighbors
        self.repet_margin = float(repet_margin)
        self.repet_power = float(repet_power)

    @property
    def repet_width_frames(self) -> int:
        """``repet_width`` in STFT frames (as ``librosa.time_to_frames``), at least 1."""
        frames = librosa.time_to_frames(
            self.repet_width, sr=self.sample_rate, hop_length=self.hop_length
        )
        return max(int(frames), 1)

    def band_gains(self) -> np.ndarray:
        """Per-bin gain of the drums: ``drums_band_gain`` inside ``drums_band``, else 1: [F]."""
        freqs = self.frequencies()
        low, high = self.drums_band
        return np.where((freqs >= low) & (freqs <= high), self.drums_band_gain, 1.0)

    def bass_response(self) -> np.ndarray:
        """``|B(f)|^2`` of the forward-backward low-pass at each bin: [F]."""
        _, response = scipy.signal.sosfreqz(self._sos, worN=self.frequencies(), fs=self.sample_rate)
        return np.abs(response) ** 2

    def separate_track(self, mix: Tensor) -> dict[str, Tensor]:
        """[C, T] -> {stem: [C, T]}; see the module docstring for the steps."""
        length = mix.shape[-1]
        dtype = mix.dtype
        spec = self.stft(mix)  # [C, F, N]
        mag = self.mask_magnitude(spec)  # [1 or C, F, N]
        mask_h, mask_p = self.hpss(mag)
        mask_h = torch.from_numpy(np.ascontiguousarray(mask_h)).to(dtype)
        mask_p = torch.from_numpy(np.ascontiguousarray(mask_p)).to(dtype)

        gains = torch.from_numpy(self.band_gains()).to(dtype)[:, None]
        drums = self.istft(spec * mask_p * gains, length)

        harmonic = spec * mask_h
        bass_in = self.istft(harmonic, length).numpy()
        bass = torch.from_numpy(np.ascontiguousarray(zero_phase_filter(self._sos, bass_in))).to(
            dtype
        )

        above_bass = harmonic * torch.from_numpy(1 - self.bass_response()).to(dtype)[:, None]
        fg = np.stack([self._foreground(m) for m in self.mask_magnitude(above_bass)])
        vocals = self.istft(above_bass * torch.from_numpy(fg).to(dtype), length)

        other = mix - drums - bass - vocals
        return {"drums": drums, "bass": bass, "other": other, "vocals": vocals}

    def _foreground(self, mag: np.ndarray) -> np.ndarray:
        """REPET-SIM foreground mask of one magnitude spectrogram [F, N] -> [F, N]."""
        _, foreground = repet_sim_masks(
            mag,
            width=self.repet_width_frames,
            k=self.repet_k,
            neighbors=self.repet_neighbors,
            margin_foreground=self.repet_margin,
            power=self.repet_power,
        )
        return foreground

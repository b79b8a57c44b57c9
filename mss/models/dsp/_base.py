"""What the DSP baselines share: the separator contract around a per-track numpy/torch core."""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np
import torch
from torch import Tensor, nn

from mss.models._contract import check_mix
from mss.models._stft import istft, stft

#: The stems every DSP baseline produces; ``sources`` may list them in any order.
STEMS = ("drums", "bass", "other", "vocals")
CHANNEL_MASKS = ("shared", "per_channel")


class DSPSeparator(nn.Module):
    """Base of the non-trainable baselines: input checks, batching, STFT, source order.

    Subclasses implement :meth:`separate_track` on one track. There are no
    parameters and no buffers: the modules hold only their settings, so moving
    them to a device is a no-op and the work runs on the CPU in the input's
    float precision (float32, or float64 for float64 input); the output comes
    back with the input's dtype and device.

    Both baselines start with HPSS (librosa's median-filtering soft masks), so
    its settings live here too.

    Args:
        sources (Sequence[str]): output order; must be ``drums``, ``bass``,
            ``other`` and ``vocals`` in any order.
        sample_rate (int): sample rate of the audio, needed to place the bands.
        audio_channels (int): channels of the mixture and of each stem.
        n_fft (int): STFT size.
        hop_length (int): STFT hop, at most ``n_fft // 4`` so that the
            iSTFT of an unmasked STFT is the input to float precision.
        channel_masks (str): ``"shared"``: one mask set for all channels, computed
            on the mean of the channels' magnitudes, which keeps the stereo image
            of each stem; ``"per_channel"``: each channel on its own.
        hpss_kernel_size (int | tuple[int, int]): HPSS median filter lengths
            (harmonic along time in frames, percussive along frequency in bins).
        hpss_margin (float | tuple[float, float]): HPSS margins (>= 1); above 1
            some energy is neither harmonic nor percussive.
        hpss_power (float): exponent of the HPSS soft masks.
    """

    trainable = False
    # REPET-SIM and NMF model the whole song (its repetitions, its spectral templates): chunked
    # inference would cut them apart, so evaluation separates these tracks in one piece.
    whole_track = True

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
    ) -> None:
        super().__init__()
        sources = [str(s) for s in sources]
        if sorted(sources) != sorted(STEMS):
            raise ValueError(
                f"{type(self).__name__} produces the stems {list(STEMS)}; sources must list "
                f"exactly these (any order). Found: {sources}"
            )
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be positive. Found: {sample_rate}")
        if int(audio_channels) < 1:
            raise ValueError(f"audio_channels must be at least 1. Found: {audio_channels}")
        if n_fft < 16 or hop_length < 1 or hop_length > n_fft // 4:
            raise ValueError(
                f"need n_fft >= 16 and 1 <= hop_length <= n_fft // 4 (for exact resynthesis). "
                f"Found: n_fft={n_fft}, hop_length={hop_length}"
            )
        if channel_masks not in CHANNEL_MASKS:
            raise ValueError(
                f"channel_masks must be one of {list(CHANNEL_MASKS)}. Found: {channel_masks!r}"
            )
        self.sources = sources
        self.sample_rate = int(sample_rate)
        self.audio_channels = int(audio_channels)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.channel_masks = channel_masks
        self.hpss_kernel_size = _int_or_pair(hpss_kernel_size, "hpss_kernel_size")
        self.hpss_margin = _float_or_pair(hpss_margin, "hpss_margin")
        if min(_as_list(self.hpss_margin)) < 1:
            raise ValueError(f"hpss_margin must be >= 1. Found: {hpss_margin}")
        if not hpss_power > 0:
            raise ValueError(f"hpss_power must be positive. Found: {hpss_power}")
        self.hpss_power = float(hpss_power)

    @property
    def nyquist(self) -> float:
        return self.sample_rate / 2

    def frequencies(self) -> np.ndarray:
        """Centre frequency in Hz of each STFT bin: [shape=(n_fft // 2 + 1,)]."""
        return librosa.fft_frequencies(sr=self.sample_rate, n_fft=self.n_fft)

    def stft(self, x: Tensor) -> Tensor:
        """[..., T] real -> [..., F, frames] complex."""
        return stft(x, self.n_fft, self.hop_length)

    def istft(self, z: Tensor, length: int) -> Tensor:
        """[..., F, frames] complex -> [..., length] real."""
        return istft(z, self.n_fft, self.hop_length, length)

    def mask_magnitude(self, spec: Tensor) -> np.ndarray:
        """Magnitudes the masks are computed on: [1, F, N] (shared) or [C, F, N]."""
        mag = spec.abs().numpy()
        if self.channel_masks == "shared":
            return mag.mean(axis=0, keepdims=True)
        return mag

    def hpss(self, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Harmonic and percussive soft masks of magnitudes [..., F, N] (librosa)."""
        return librosa.decompose.hpss(
            mag,
            kernel_size=self.hpss_kernel_size,
            margin=self.hpss_margin,
            power=self.hpss_power,
            mask=True,
        )

    def separate_track(self, mix: Tensor) -> dict[str, Tensor]:
        """Separate one track.

        Args:
            mix (Tensor): [shape=(channels, frames)], float32 or float64, on the CPU.

        Returns:
            dict[str, Tensor]: each of :data:`STEMS` -> [shape=(channels, frames)].
        """
        raise NotImplementedError

    def forward(self, mix: Tensor) -> Tensor:
        """Separate a batch of mixtures.

        Args:
            mix (Tensor): [shape=(batch, audio_channels, frames)], any frames >= 1.

        Returns:
            Tensor: [shape=(batch, len(sources), audio_channels, frames)], stems in the
            order of ``self.sources``, dtype and device of ``mix``.
        """
        if not isinstance(mix, Tensor):
            raise ValueError(
                f"Expected a torch.Tensor [batch, channel, frames]. Found: {type(mix)}"
            )
        check_mix(mix, self.audio_channels)
        if not mix.is_floating_point():
            raise ValueError(f"Expected a floating-point tensor. Found: {mix.dtype}")
        work_dtype = torch.float64 if mix.dtype == torch.float64 else torch.float32
        x = mix.detach().to(device="cpu", dtype=work_dtype)
        if not torch.isfinite(x).all():
            raise ValueError("Expected finite audio: the mixture contains NaN or inf.")
        out = []
        with torch.no_grad():
            for track in x:
                stems = self.separate_track(track)
                out.append(torch.stack([stems[name] for name in self.sources]))
        return torch.stack(out).to(device=mix.device, dtype=mix.dtype)


def _as_list(value) -> list:
    """A scalar or a sequence (including omegaconf's ListConfig) as a list."""
    return [value] if isinstance(value, int | float | str) else list(value)


def _int_or_pair(value, name: str) -> int | tuple[int, int]:
    values = [int(v) for v in _as_list(value)]
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them. Found: {value}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _float_or_pair(value, name: str) -> float | tuple[float, float]:
    values = [float(v) for v in _as_list(value)]
    if len(values) not in (1, 2):
        raise ValueError(f"{name} must be a number or a pair of them. Found: {value}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _float_pair(value, name: str) -> tuple[float, float]:
    values = [float(v) for v in _as_list(value)]
    if len(values) != 2:
        raise ValueError(f"{name} must be a pair [low, high] in Hz. Found: {value}")
    return values[0], values[1]

"""Spectrogram U-Net with a BiLSTM bottleneck (seed report, section 4.1).

The mixture's magnitude STFT is read as a 1-D signal over time whose channels are the
frequency bins of every audio channel (``C * F`` of them). An encoder of
``Conv1d + BatchNorm + ReLU`` pairs with max-pooling between them narrows it to
256 -> 512 -> 1024 channels; a 512-wide bottleneck runs a 2-layer BiLSTM over
time; a decoder of transposed convolutions with skip connections comes back up and a 1x1
convolution emits one mask per source, channel and bin. The masks multiply the complex
mixture STFT (so the mixture phase is kept; no Griffin-Lim) and the iSTFT gives waveforms.
Optionally, in eval mode, multichannel Wiener filtering refines the estimates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mss.models._contract import check_mix, declare_contract
from mss.models._stft import istft, stft
from mss.models._wiener import wiener


def _conv_bn_relu(chin: int, chout: int, kernel_size: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant.
    return [
        nn.Conv1d(chin, chout, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm1d(chout),
        nn.ReLU(),
    ]


def _double_conv(chin: int, chout: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        *_conv_bn_relu(chin, chout, kernel_size), *_conv_bn_relu(chout, chout, kernel_size)
    )


class _MaskNet(nn.Module):
    """The U-Net proper: magnitudes in, masks out, over spectrogram frames.

    Args:
        in_channels (int): input channels (``audio_channels * bins``).
        out_channels (int): mask channels (``sources * audio_channels * bins``).
        channels (Sequence[int]): encoder widths; one pooling step between consecutive ones
            and one more before the bottleneck.
        bottleneck (int): width of the bottleneck and of the BiLSTM output.
        lstm_layers (int): BiLSTM layers (0 = none).
        kernel_size (int): odd kernel of the convolutions.
        mask (str): ``"sigmoid"`` (masks in [0, 1]), ``"relu"`` (unbounded, as open-unmix) or
            ``"softmax"``: the head's raw outputs, which `UNet` normalises across sources.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        bottleneck: int,
        lstm_layers: int,
        kernel_size: int,
        mask: str,
    ) -> None:
        super().__init__()
        # Learned per-bin standardisation of the magnitudes (open-unmix's input mean/scale):
        # low bins carry orders of magnitude more energy than high ones.
        self.input_norm = nn.BatchNorm1d(in_channels)
        self.encoder = nn.ModuleList()
        chin = in_channels
        for width in channels:
            self.encoder.append(_double_conv(chin, width, kernel_size))
            chin = width
        self.widen = nn.Sequential(*_conv_bn_relu(chin, bottleneck, kernel_size))
        self.lstm = (
            nn.LSTM(bottleneck, bottleneck // 2, num_layers=lstm_layers, bidirectional=True)
            if lstm_layers > 0
            else None
        )
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        chin = bottleneck
        for width in reversed(channels):
            self.up.append(nn.ConvTranspose1d(chin, width, kernel_size=2, stride=2))
            self.decoder.append(_double_conv(2 * width, width, kernel_size))
            chin = width
        self.head = nn.Conv1d(chin, out_channels, 1)
        self.activation = {"sigmoid": torch.sigmoid, "relu": F.relu, "softmax": nn.Identity()}[mask]

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_channels, N] magnitudes -> [B, out_channels, N] masks."""
        x = self.input_norm(x)
        skips = []
        for index, encode in enumerate(self.encoder):
            if index:
                # ceil_mode keeps one frame of an odd tail instead of dropping it, so any
                # number of frames >= 1 goes through.
                x = F.max_pool1d(x, 2, ceil_mode=True)
            x = encode(x)
            skips.append(x)
        x = self.widen(F.max_pool1d(x, 2, ceil_mode=True))
        if self.lstm is not None:
            y, _ = self.lstm(x.permute(2, 0, 1))  # nn.LSTM wants [N, B, C]
            # Residual: the LSTM refines the convolutional features rather than replacing them.
            x = x + y.permute(1, 2, 0)
        for up, decode in zip(self.up, self.decoder, strict=True):
            skip = skips.pop(-1)
            x = up(x)
            if x.shape[-1] != skip.shape[-1]:
                # After ceil-mode pooling of an odd length, upsampling gives one frame too
                # many: resample onto the skip's frames.
                x = F.interpolate(x, size=skip.shape[-1], mode="linear", align_corners=False)
            x = decode(torch.cat([x, skip], dim=1))
        return self.activation(self.head(x))


class UNet(nn.Module):
    """Spectrogram-mask U-Net separator with a BiLSTM bottleneck.

    Args:
        sources (Sequence[str]): names of the stems, in output order.
        sample_rate (int): sample rate the model is trained at (metadata for the pipeline).
        audio_channels (int): channels of the mixture and of each stem.
        n_fft (int): FFT size; ``n_fft // 2 + 1`` bins per channel feed the network.
        hop_length (int): STFT hop in samples (at most ``n_fft // 4`` for exact resynthesis).
        channels (Sequence[int]): encoder widths (256, 512, 1024).
        bottleneck (int): bottleneck width, also the BiLSTM's output (512; even). The seed
            report's 2048 trains worse per CPU-minute (BENCHMARKS.md, issue 11).
        lstm_layers (int): BiLSTM layers at the bottleneck.
        kernel_size (int): odd kernel of the convolutions.
        mask (str): mask activation: ``"sigmoid"``, ``"relu"`` or ``"softmax"`` (across
            sources, per channel and bin: the masks sum to one, so the stems sum to the mixture).
        per_target (bool): one network per source (the seed's setup) instead of one network
            emitting every source's mask.
        wiener_iterations (int): multichannel Wiener EM iterations applied in eval mode
            (0 = off). Training always optimises the plain masked estimates, as open-unmix.
        wiener_eps (float): regularisation of the Wiener filter.

    With the defaults and 4 stereo sources the model has 32,952,588 parameters
    (``per_target`` roughly multiplies that by the number of sources).
    """

    trainable = True

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int = 44100,
        audio_channels: int = 2,
        n_fft: int = 4096,
        hop_length: int = 1024,
        channels: Sequence[int] = (256, 512, 1024),
        bottleneck: int = 512,
        lstm_layers: int = 2,
        kernel_size: int = 3,
        mask: str = "sigmoid",
        per_target: bool = False,
        wiener_iterations: int = 0,
        wiener_eps: float = 1e-10,
    ) -> None:
        super().__init__()
        declare_contract(self, sources, sample_rate, audio_channels)
        if hop_length > n_fft // 4:
            raise ValueError(
                f"hop_length ({hop_length}) must be at most n_fft // 4 ({n_fft // 4}) for the "
                "Hann-window iSTFT to reconstruct exactly."
            )
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep frame counts, got {kernel_size}.")
        if bottleneck % 2:
            raise ValueError(f"bottleneck must be even (two LSTM directions), got {bottleneck}.")
        if mask not in ("sigmoid", "relu", "softmax"):
            raise ValueError(f"mask must be 'sigmoid', 'relu' or 'softmax', got {mask!r}.")
        if not channels:
            raise ValueError("channels must list at least one encoder width.")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.per_target = per_target
        self.mask = mask
        self.wiener_iterations = wiener_iterations
        self.wiener_eps = wiener_eps

        bins = n_fft // 2 + 1
        nets = len(self.sources) if per_target else 1
        per_net = 1 if per_target else len(self.sources)
        self.nets = nn.ModuleList(
            _MaskNet(
                in_channels=self.audio_channels * bins,
                out_channels=per_net * self.audio_channels * bins,
                channels=list(channels),
                bottleneck=bottleneck,
                lstm_layers=lstm_layers,
                kernel_size=kernel_size,
                mask=mask,
            )
            for _ in range(nets)
        )

    def forward(self, mix: Tensor) -> Tensor:
        """Separate a mixture.

        Args:
            mix (Tensor): [shape=(batch, audio_channels, frames)], any number of frames >= 1.

        Returns:
            Tensor: [shape=(batch, len(sources), audio_channels, frames)], stems in the order
            of ``self.sources``.
        """
        check_mix(mix, self.audio_channels)
        batch, channels, length = mix.shape

        spec = stft(mix, self.n_fft, self.hop_length)  # [B, C, F, N] complex
        mag = spec.abs()
        bins, frames = mag.shape[-2:]
        x = mag.reshape(batch, channels * bins, frames)
        masks = torch.cat([net(x) for net in self.nets], dim=1)
        masks = masks.reshape(batch, len(self.sources), channels, bins, frames)
        if self.mask == "softmax":
            # across sources: with per_target the networks' outputs meet only here
            masks = masks.softmax(dim=1)

        if self.wiener_iterations > 0 and not self.training:
            est = wiener(masks * mag[:, None], spec, self.wiener_iterations, self.wiener_eps)
        else:
            # Real masks scale the (re, im) pairs: the same numbers as `masks * spec[:, None]`,
            # in real arithmetic, which the ONNX exporter translates (it has no complex
            # broadcasting or unsqueeze).
            est = torch.view_as_complex(masks[..., None] * torch.view_as_real(spec)[:, None])
        return istft(est, self.n_fft, self.hop_length, length).to(mix.dtype)

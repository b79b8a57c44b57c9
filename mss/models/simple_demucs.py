"""A small time-domain Demucs: the waveform U-Net of the seed report.

Four encoder blocks (``Conv1d(K=8, S=4) -> ReLU -> Conv1d(1x1) -> GLU``) take the stereo
mixture down to 128 channels at 1/256 of the sample rate, a 2-layer bidirectional LSTM
models the long-range structure there, and a mirrored decoder
(``Conv1d(1x1) -> GLU -> ConvTranspose1d(K=8, S=4) -> ReLU``) with additive skip connections
brings it back to ``S * C`` waveform channels. It follows Demucs v2 (Defossez et al., 2019)
without its resampling and context convolutions, which keeps the lengths exact: the input is
padded to a length that every strided convolution divides, so each decoder output lines up
with its skip connection without trimming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from mss.models._contract import check_mix, declare_contract


class _BLSTM(nn.Module):
    """Bidirectional LSTM over time, projected back to the input width.

    Args:
        dim (int): channels in and out.
        hidden (int): hidden size of each direction.
        layers (int): number of stacked LSTM layers.
    """

    def __init__(self, dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=dim, hidden_size=hidden, num_layers=layers, bidirectional=True
        )
        # The seed reduced the 2*hidden BiLSTM output with a 1x1 conv + ReLU; a 1x1 conv over
        # [B, C, T] is the same map as a Linear over the last axis of [T, B, C].
        self.reduce = nn.Sequential(nn.Linear(2 * hidden, dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        """[B, dim, T] -> [B, dim, T]."""
        y = x.permute(2, 0, 1)  # nn.LSTM wants [T, B, C]
        y, _ = self.lstm(y)
        y = self.reduce(y)
        return y.permute(1, 2, 0)


def _rescale_conv(module: nn.Module, reference: float) -> None:
    """Scale conv weights so their std is sqrt(std * reference) (Demucs' ``rescale``).

    Demucs found that shrinking PyTorch's default init this way speeds up early training of
    waveform models noticeably; ``reference=0`` disables it.
    """
    if not reference:
        return
    for sub in module.modules():
        if isinstance(sub, nn.Conv1d | nn.ConvTranspose1d):
            std = sub.weight.std().detach()
            scale = (std / reference) ** 0.5
            sub.weight.data /= scale
            if sub.bias is not None:
                sub.bias.data /= scale


class SimpleDemucs(nn.Module):
    """Time-domain U-Net with a BiLSTM bottleneck (simplified Demucs).

    Args:
        sources (Sequence[str]): names of the stems, in output order.
        sample_rate (int): sample rate the model is trained at (metadata for the pipeline).
        audio_channels (int): channels of the mixture and of each stem.
        channels (int): width of the first encoder block; block ``i`` has
            ``channels * growth**i`` channels (16, 32, 64, 128 by default).
        growth (float): width factor between blocks.
        depth (int): number of encoder (and decoder) blocks.
        kernel_size (int): kernel of the strided convolutions.
        stride (int): stride of the strided convolutions; the bottleneck runs at
            ``sample_rate / stride**depth`` frames per second.
        lstm_layers (int): BiLSTM layers at the bottleneck (0 = none).
        lstm_hidden (int | None): hidden size per direction; ``None`` = twice the bottleneck
            width (256 by default, which gives the seed's ~2.7 M parameters).
        rescale (float): Demucs' initial weight rescaling reference (0 = PyTorch's init).
        normalize (bool): standardise the input by the mixture's mean and std and undo it on
            the output, so the network sees the same level whatever the song's loudness.

    With the defaults and four stereo sources the model has 2,694,824 parameters.
    """

    trainable = True

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int = 44100,
        audio_channels: int = 2,
        channels: int = 16,
        growth: float = 2.0,
        depth: int = 4,
        kernel_size: int = 8,
        stride: int = 4,
        lstm_layers: int = 2,
        lstm_hidden: int | None = None,
        rescale: float = 0.1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        declare_contract(self, sources, sample_rate, audio_channels)
        if kernel_size < stride:
            raise ValueError(
                f"kernel_size ({kernel_size}) must be >= stride ({stride}) so that the "
                "strided convolutions cover every sample."
            )
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        self.depth = depth
        self.kernel_size = kernel_size
        self.stride = stride
        self.normalize = normalize

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        chin = self.audio_channels
        width = channels
        for index in range(depth):
            self.encoder.append(
                nn.Sequential(
                    nn.Conv1d(chin, width, kernel_size, stride),
                    nn.ReLU(),
                    nn.Conv1d(width, 2 * width, 1),
                    nn.GLU(dim=1),
                )
            )
            # The outermost decoder block emits every stem at once: S * C channels.
            chout = len(self.sources) * self.audio_channels if index == 0 else chin
            block = [
                nn.Conv1d(width, 2 * width, 1),
                nn.GLU(dim=1),
                nn.ConvTranspose1d(width, chout, kernel_size, stride),
            ]
            if index > 0:
                # No ReLU on the output: waveforms are signed.
                block.append(nn.ReLU())
            self.decoder.insert(0, nn.Sequential(*block))
            chin = width
            width = int(round(growth * width))

        if lstm_layers > 0:
            self.lstm: nn.Module = _BLSTM(chin, lstm_hidden or 2 * chin, lstm_layers)
        else:
            self.lstm = nn.Identity()
        _rescale_conv(self, rescale)

    def valid_length(self, length: int) -> int:
        """Smallest length >= ``length`` that every strided convolution divides exactly.

        With that length each encoder output has ``(L - K) / S + 1`` frames, and the
        transposed convolutions give back exactly the lengths the encoder saw.
        """
        for _ in range(self.depth):
            length = max(1, math.ceil((length - self.kernel_size) / self.stride) + 1)
        for _ in range(self.depth):
            length = (length - 1) * self.stride + self.kernel_size
        return int(length)

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

        x = mix
        if self.normalize:
            # Statistics of the mono mix, as in Demucs; population std so a 1-sample input
            # gives 0 rather than NaN (the 1e-5 floor then keeps silence silent).
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True, correction=0)
            x = (x - mean) / (1e-5 + std)

        # Pad symmetrically so the receptive field sees context on both sides of the crop.
        delta = self.valid_length(length) - length
        x = nn.functional.pad(x, (delta // 2, delta - delta // 2))

        skips = []
        for encode in self.encoder:
            x = encode(x)
            skips.append(x)
        x = self.lstm(x)
        for decode in self.decoder:
            x = decode(x + skips.pop(-1))

        x = x[..., delta // 2 : delta // 2 + length]
        x = x.reshape(batch, len(self.sources), channels, length)
        if self.normalize:
            x = x * std[:, None] + mean[:, None]
        return x

"""Open-Unmix (Stöter et al., 2019) from the ``openunmix`` package behind the separator contract.

One ``openunmix.model.OpenUnmix`` per source (the contract's ``sources`` are its targets, in
that order), run by the package's own ``openunmix.model.Separator``: STFT of the mixture, each
target's magnitude spectrogram, multichannel Wiener filtering (``openunmix.filtering.wiener``)
and iSTFT to waveforms of exactly the input's length. Nothing of the package is copied.

mss trains every model with a loss on waveforms, so the Separator runs in training too, and
what it does there is the one difference from inference:

- training mode: no EM iterations (``niter = 0``): each target's magnitude with the mixture's
  phase, a differentiable path from the waveform loss to every target network;
- eval mode: ``niter`` EM iterations of the Wiener post-filter (default 1, as openunmix's
  ``umxhq`` separator), on windows of ``wiener_win_len`` frames as the package does.

The defaults are the package's ``umxhq`` architecture for 44.1 kHz (``n_fft`` 4096, hop 1024,
``hidden_size`` 512, 3 BiLSTM layers, bins above 16 kHz not fed to the network). The STFT sizes
are in samples, so another sample rate changes the time and frequency resolution; the
``bandwidth`` in Hz is converted to ``max_bin`` with ``sample_rate``.

Trained from scratch, the networks' input statistics (``input_mean``/``input_scale``, learnt
parameters) start at 0 and 1 instead of openunmix's training-set statistics; the BatchNorm
right after the first layer makes the network insensitive to that scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from openunmix import model as umx
from openunmix.utils import bandwidth_to_max_bin
from torch import Tensor, nn

from mss.models._contract import check_mix, declare_contract


class _Separator(umx.Separator):
    """openunmix's Separator whose EM iterations only run in eval mode.

    ``Separator.forward`` reads ``self.niter``; here that reads 0 in training mode and the
    configured count in eval mode, so the package's forward runs unchanged in both.
    """

    @property
    def niter(self) -> int:
        return 0 if self.training else self.eval_niter

    @niter.setter
    def niter(self, value: int) -> None:  # set once by Separator.__init__
        self.eval_niter = int(value)


class OpenUnmix(nn.Module):
    """Open-Unmix, one network per source, with the separator contract.

    Args:
        sources (Sequence[str]): names of the stems (openunmix's targets), in output order.
        sample_rate (int): sample rate of the data (the package's models are for 44100).
        audio_channels (int): channels of the mixture and of each stem (1 or 2).
        n_fft (int): STFT size in samples (umxhq: 4096).
        n_hop (int): STFT hop in samples (umxhq: 1024).
        hidden_size (int): width of each network's bottleneck and BiLSTM output (umxhq: 512).
        nb_layers (int): BiLSTM layers (umxhq: 3).
        max_bin (int | None): bins fed to the networks; None = from ``bandwidth``.
        bandwidth (float): with ``max_bin`` None, feed the bins up to this frequency in Hz
            (umxhq: 16000 -> 1487 bins at 44.1 kHz). The networks still output every bin.
        unidirectional (bool): causal LSTM (openunmix's real-time variant).
        niter (int): Wiener EM iterations in eval mode (openunmix's separator: 1; 0 = none).
            Needs at least two sources.
        wiener_win_len (int | None): frames per independent Wiener window (openunmix: 300;
            None = the whole input at once).

    Attributes:
        model (openunmix.model.Separator): the package's separator; its ``target_models``
            hold one ``openunmix.model.OpenUnmix`` per source.
    """

    trainable = True

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int = 44100,
        audio_channels: int = 2,
        n_fft: int = 4096,
        n_hop: int = 1024,
        hidden_size: int = 512,
        nb_layers: int = 3,
        max_bin: int | None = None,
        bandwidth: float = 16000.0,
        unidirectional: bool = False,
        niter: int = 1,
        wiener_win_len: int | None = 300,
    ) -> None:
        super().__init__()
        declare_contract(self, sources, sample_rate, audio_channels)
        if niter < 0:
            raise ValueError(f"niter must be >= 0, got {niter}.")
        if niter > 0 and len(sources) < 2:
            raise ValueError(
                f"OpenUnmix's Wiener filter needs at least two sources, got {list(sources)}; "
                "set niter=0 (model.niter=0) to separate a single source."
            )
        nb_bins = n_fft // 2 + 1
        if max_bin is None:
            max_bin = int(bandwidth_to_max_bin(self.sample_rate, n_fft, bandwidth))
        if not 0 < max_bin <= nb_bins:
            raise ValueError(f"max_bin must be in [1, {nb_bins}] for n_fft={n_fft}, got {max_bin}.")
        self.model = _Separator(
            {
                name: umx.OpenUnmix(
                    nb_bins=nb_bins,
                    nb_channels=self.audio_channels,
                    hidden_size=hidden_size,
                    nb_layers=nb_layers,
                    unidirectional=unidirectional,
                    max_bin=max_bin,
                )
                for name in self.sources
            },
            niter=niter,
            sample_rate=float(self.sample_rate),
            n_fft=n_fft,
            n_hop=n_hop,
            nb_channels=self.audio_channels,
            wiener_win_len=wiener_win_len,
        )
        # The package's STFT reflect-pads n_fft / 2 samples at each end, which needs more
        # samples than that; shorter inputs get zeros behind them, cut off again.
        self.min_length = n_fft // 2 + 1

    def forward(self, mix: Tensor) -> Tensor:
        """Separate a mixture.

        Args:
            mix (Tensor): [shape=(batch, audio_channels, frames)], any number of frames >= 1.

        Returns:
            Tensor: [shape=(batch, len(sources), audio_channels, frames)], stems in the order
            of ``self.sources``; Wiener-filtered in eval mode, mixture phase in training mode.
        """
        check_mix(mix, self.audio_channels)
        length = mix.shape[-1]
        if length < self.min_length:
            padded = nn.functional.pad(mix, (0, self.min_length - length))
            return self.model(padded)[..., :length]
        return self.model(mix)

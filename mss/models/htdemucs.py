"""Hybrid Transformer Demucs (Rouard et al., 2023) from the ``demucs`` package, from scratch.

``demucs.htdemucs.HTDemucs`` behind the separator contract; nothing of the package is copied.
``conf/model/htdemucs.yaml`` is the package's default architecture (``HTDemucs()``'s own
defaults: 48 channels, depth 4, 5 cross-transformer layers, ``nfft`` 4096, 44.1 kHz) and
``conf/model/htdemucs_small.yaml`` a small CPU preset of the same class.

HTDemucs is built for one length, its training ``segment``: its cross-transformer attends over
the whole input, so it is trained on chunks of one length and, in eval mode, runs on exactly
that length. The wrapper keeps the contract for any length as demucs itself does:

- training mode: any length, passed through as the package does. (The package then records
  the batch's length as its ``segment``; the wrapper restores the configured one afterwards,
  so a model rebuilt from a checkpoint runs exactly like the one that was trained.)
- eval mode, at most ``segment``: the package's own padding (zeros behind, cut off again).
- eval mode, longer: demucs's own long-input inference, ``demucs.apply.apply_model`` with
  ``split=True``: segments of the model's length at ``overlap``, cross-faded with its
  triangular weights, no shifts. Raising instead would break every caller that hands a
  separator a whole song or a longer chunk (``segment=null``, ``mss.Separator``), and
  ``apply_model`` is what the package does there, so the output is the package's.

``segment`` is the training chunk length (the config reads ``${data.segment}``), and mss's
chunked inference should cut the same length: ``inference.segment=${data.segment}`` for
``train.py`` (validation, ``test=true``), ``segment=<the same seconds>`` for ``eval.py`` and
``separate.py``. Then every chunk is one model call. A longer ``inference.segment`` still
works (each chunk is split again inside, with a second cross-fade: slower); a shorter one
pads every chunk with zeros up to ``segment`` (wasted compute, and the zeros enter the model's
input normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs as _HTDemucs
from torch import Tensor, nn

from mss.models._contract import check_mix, declare_contract


class HTDemucs(nn.Module):
    """Hybrid Transformer Demucs (``demucs.htdemucs.HTDemucs``) with the separator contract.

    Args:
        sources (Sequence[str]): names of the stems, in output order.
        sample_rate (int): sample rate of the data (the package's ``samplerate``; its default
            architecture is for 44.1 kHz, ``nfft`` 4096).
        audio_channels (int): channels of the mixture and of each stem.
        segment (float): training chunk length in seconds: the length the model runs on in
            eval mode (shorter inputs are padded to it, longer ones split into it).
        overlap (float): overlap of the segments of inputs longer than ``segment`` (eval mode),
            as demucs's ``apply_model`` (default 0.25).
        channels (int): hidden channels of the first layer (package: 48).
        depth (int): encoder/decoder layers (package: 4).
        t_layers (int): cross-transformer layers per branch (package: 5).
        nfft (int): FFT size of the spectral branch (package: 4096).
        **kwargs: any other ``demucs.htdemucs.HTDemucs`` argument (``t_heads``, ``growth``,
            ``bottom_channels``, ...).

    Attributes:
        model (demucs.htdemucs.HTDemucs): the package's model.
        segment_length (int): ``segment`` in samples.
    """

    trainable = True

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int = 44100,
        audio_channels: int = 2,
        segment: float = 6.0,
        overlap: float = 0.25,
        channels: int = 48,
        depth: int = 4,
        t_layers: int = 5,
        nfft: int = 4096,
        **kwargs,
    ) -> None:
        super().__init__()
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        declare_contract(self, sources, sample_rate, audio_channels)
        self.overlap = float(overlap)
        self.segment_length = int(round(float(segment) * self.sample_rate))
        if self.segment_length < 1:
            raise ValueError(f"segment must be a positive number of seconds, got {segment}.")
        # As a fraction of samples, `int(segment * samplerate)` inside the package is exact.
        self._segment = Fraction(self.segment_length, self.sample_rate)
        self.model = _HTDemucs(
            sources=self.sources,
            audio_channels=self.audio_channels,
            channels=channels,
            depth=depth,
            t_layers=t_layers,
            nfft=nfft,
            samplerate=self.sample_rate,
            segment=self._segment,
            use_train_segment=True,
            **kwargs,
        )

    def forward(self, mix: Tensor) -> Tensor:
        """Separate a mixture.

        Args:
            mix (Tensor): [shape=(batch, audio_channels, frames)], any number of frames >= 1.

        Returns:
            Tensor: [shape=(batch, len(sources), audio_channels, frames)], stems in the order
            of ``self.sources``. In eval mode an input longer than ``segment`` goes through
            ``demucs.apply.apply_model``, which runs without gradients.
        """
        check_mix(mix, self.audio_channels)
        if self.training:
            try:
                return self.model(mix)
            finally:
                self.model.segment = self._segment
        if mix.shape[-1] <= self.segment_length:
            return self.model(mix)
        return apply_model(self.model, mix, shifts=0, split=True, overlap=self.overlap)

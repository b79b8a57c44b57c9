"""Band-Split RoFormer (Lu et al., 2023) from the ``bs-roformer`` package, from scratch.

``bs_roformer.BSRoformer`` behind the separator contract; nothing of the package is copied.
The complex STFT of the mixture (``n_fft`` 2048, hop 512, 44.1 kHz) is split into the
package's 62 bands, each band is projected to ``dim`` features, ``depth`` blocks of axial
transformers with rotary embeddings attend over time and over bands, and one mask estimator
per stem gives a complex mask for every bin of every channel; the masked mixture STFT goes
back to waveforms. ``conf/model/bs_roformer.yaml`` is the package's own example
(``dim`` 512, ``depth`` 12, one time and one frequency layer per block, as in the paper) with
the class defaults for everything else; ``bs_roformer_small.yaml`` a tiny CPU preset.

What the package's ``forward`` gives and how it is mapped to the contract:

- stems ``[B, num_stems, C, T']`` for ``num_stems > 1`` but ``[B, C, T']`` for one stem: the
  wrapper always returns ``[B, S, C, T]`` (``num_stems = len(sources)``, stems in the order
  of ``sources``; ``stereo = audio_channels == 2``);
- ``T' = hop * (T // hop)``: its iSTFT has no ``length``, so the last ``T mod hop`` samples
  are dropped, and inputs of at most ``n_fft / 2`` samples fail in the STFT's reflect
  padding. The wrapper appends zeros up to a multiple of the hop above ``n_fft / 2`` and cuts
  the output back to ``T``, so every input sample gets an estimate; for lengths that are
  already such a multiple the output is the package's, unchanged.
- its loss (``forward(mix, target)``) is never used: mss's loss lives in ``mss.losses``.
"""

from __future__ import annotations

from collections.abc import Sequence

import bs_roformer
from torch import Tensor, nn

from mss.models._contract import check_mix, declare_contract

# BSRoformer's tuple-typed arguments (checked by beartype); Hydra hands over lists.
_TUPLE_ARGUMENTS = ("freqs_per_bands", "freq_range", "multi_stft_resolutions_window_sizes")


class BSRoformer(nn.Module):
    """Band-Split RoFormer (``bs_roformer.BSRoformer``) with the separator contract.

    Args:
        sources (Sequence[str]): names of the stems, in output order (``num_stems``).
        sample_rate (int): sample rate of the data (the default bands are for 44.1 kHz with
            ``stft_n_fft`` 2048).
        audio_channels (int): 1 (mono) or 2 (stereo) channels of the mixture and stems.
        dim (int): feature width of every band.
        depth (int): blocks of one time transformer and one frequency transformer.
        time_transformer_depth (int): layers of each time transformer.
        freq_transformer_depth (int): layers of each frequency transformer.
        heads (int): attention heads (package: 8).
        dim_head (int): width of each head (package: 64).
        **kwargs: any other ``bs_roformer.BSRoformer`` argument (``stft_n_fft``,
            ``stft_hop_length``, ``freqs_per_bands``, ``num_residual_streams``, ...), lists
            given for its tuple arguments.

    Attributes:
        model (bs_roformer.BSRoformer): the package's model.
        min_length (int): the shortest length the package's forward is given (inputs are
            padded to a multiple of the hop of at least this).
    """

    trainable = True

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int = 44100,
        audio_channels: int = 2,
        dim: int = 512,
        depth: int = 12,
        time_transformer_depth: int = 1,
        freq_transformer_depth: int = 1,
        heads: int = 8,
        dim_head: int = 64,
        **kwargs,
    ) -> None:
        super().__init__()
        if audio_channels not in (1, 2):
            raise ValueError(f"BSRoformer takes 1 or 2 audio channels, got {audio_channels}.")
        declare_contract(self, sources, sample_rate, audio_channels)
        for name in _TUPLE_ARGUMENTS:
            if kwargs.get(name) is not None:
                kwargs[name] = tuple(kwargs[name])
        self.model = bs_roformer.BSRoformer(
            dim=dim,
            depth=depth,
            stereo=self.audio_channels == 2,
            num_stems=len(self.sources),
            time_transformer_depth=time_transformer_depth,
            freq_transformer_depth=freq_transformer_depth,
            heads=heads,
            dim_head=dim_head,
            **kwargs,
        )
        self.hop = int(self.model.stft_kwargs["hop_length"])
        # The STFT reflect-pads n_fft // 2 samples on each side, which needs a longer input.
        self.min_length = self._padded_length(int(self.model.stft_kwargs["n_fft"]) // 2 + 1)

    def _padded_length(self, length: int) -> int:
        return -(-length // self.hop) * self.hop

    def forward(self, mix: Tensor) -> Tensor:
        """Separate a mixture.

        Args:
            mix (Tensor): [shape=(batch, audio_channels, frames)], any number of frames >= 1.

        Returns:
            Tensor: [shape=(batch, len(sources), audio_channels, frames)], stems in the order
            of ``self.sources``.
        """
        check_mix(mix, self.audio_channels)
        length = mix.shape[-1]
        padded = max(self._padded_length(length), self.min_length)
        out = self.model(nn.functional.pad(mix, (0, padded - length)))
        if out.dim() == 3:  # the package drops the stem axis of a single stem
            out = out.unsqueeze(1)
        return out[..., :length]

"""torchaudio's Hybrid Demucs behind the separator contract, from scratch or pretrained.

One wrapper for every preset: ``conf/model/hdemucs_{low,medium,high}.yaml`` set ``nfft`` and
``depth`` as torchaudio's ``hdemucs_low/medium/high`` factories do (1024/5, 2048/6, 4096/6),
and ``conf/model/hdemucs_pretrained.yaml`` loads the weights of a torchaudio bundle.

Pretrained weights are read from where the bundle itself caches them,
``torch.hub.get_dir() / "torchaudio" / <bundle path>`` (``$TORCH_HOME/hub/torchaudio/models/
hdemucs_high_musdbhq_only.pt`` for ``HDEMUCS_HIGH_MUSDB``), so a file fetched once by
``bundle.get_model()`` or by hand serves both. Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from mss.models._contract import check_mix, declare_contract

log = logging.getLogger(__name__)

# Bundles whose weights can be loaded, and what to tell the user about each.
BUNDLES = {
    "HDEMUCS_HIGH_MUSDB": "trained on the MUSDB18-HQ training set only",
    "HDEMUCS_HIGH_MUSDB_PLUS": (
        "trained on MUSDB18-HQ *including its test set* plus 800 extra songs: its scores on "
        "the MUSDB18-HQ test set are not valid"
    ),
}
_BUNDLE_URL = "https://download.pytorch.org/torchaudio/{}"
# Architecture of every HDEMUCS_* bundle (torchaudio.models.hdemucs_high).
_BUNDLE_ARCH = {"nfft": 4096, "depth": 6, "channels": 48, "audio_channels": 2}


def bundle_weights_path(bundle: str) -> Path:
    """Where torchaudio's bundle caches its weights (and where we look for them)."""
    return Path(torch.hub.get_dir()) / "torchaudio" / _bundle(bundle)._model_path


def bundle_weights_url(bundle: str) -> str:
    """Where torchaudio's bundle downloads its weights from."""
    return _BUNDLE_URL.format(_bundle(bundle)._model_path)


def _bundle(name: str) -> torchaudio.pipelines.SourceSeparationBundle:
    if name not in BUNDLES:
        raise ValueError(f"Unknown pretrained bundle {name!r}; choose one of {sorted(BUNDLES)}.")
    return getattr(torchaudio.pipelines, name)


def _bundle_sources(bundle: torchaudio.pipelines.SourceSeparationBundle) -> list[str]:
    # The factory is functools.partial(hdemucs_high, sources=[...]); its keywords hold the
    # order the weights were trained in.
    return list(bundle._model_factory_func.keywords["sources"])


def _load_state_dict(bundle: str, download: bool) -> dict[str, Tensor]:
    path = bundle_weights_path(bundle)
    url = bundle_weights_url(bundle)
    if not path.is_file() and download:
        try:
            # torchaudio's own downloader writes exactly to `path`.
            torchaudio.utils._download_asset(_bundle(bundle)._model_path)
        except Exception as err:  # no network, proxy, disk: all end in the message below
            log.warning("Downloading %s failed: %s", url, err)
    if not path.is_file():
        raise FileNotFoundError(
            f"Pretrained weights for {bundle} not found at {path}. Download {url} and save "
            f"it at exactly that path (e.g. `mkdir -p {path.parent} && curl -L -o {path} "
            f"{url}`), or set TORCH_HOME to the folder whose hub/torchaudio/models/ holds it."
        )
    log.info("Loading %s weights from %s", bundle, path)
    return torch.load(path, map_location="cpu", weights_only=True)


class HDemucs(nn.Module):
    """Hybrid Demucs (``torchaudio.models.HDemucs``) with the separator contract.

    Args:
        sources (Sequence[str]): names of the stems, in output order.
        sample_rate (int): sample rate of the data. For a pretrained bundle it must equal
            the bundle's (44100); from scratch it is metadata.
        audio_channels (int): channels of the mixture and of each stem.
        nfft (int): FFT size of the spectral branch (low 1024, medium 2048, high 4096).
        depth (int): encoder/decoder layers (low 5, medium and high 6).
        channels (int): hidden channels of the first layer (48 in torchaudio's presets).
        pretrained (str | None): ``"HDEMUCS_HIGH_MUSDB"`` or ``"HDEMUCS_HIGH_MUSDB_PLUS"`` to
            load torchaudio's bundle weights; the architecture is then the bundle's, and
            ``sources`` must be a subset (any order) of the bundle's
            ``[drums, bass, other, vocals]``: outputs are reordered to ``sources``.
        download (bool): with ``pretrained``, try torchaudio's download when the file is not
            in the cache.
        load_weights (bool): with ``pretrained``, read the bundle's file. ``False`` builds the
            bundle's architecture and source order without it, for rebuilding a fine-tuned
            model whose weights come from one of our checkpoints.
        **kwargs: any other ``torchaudio.models.HDemucs`` argument (from scratch only).

    Attributes:
        pretrained (bool): True when bundle weights were loaded, so evaluation can run the
            model without a checkpoint of ours.
        bundle (str | None): the bundle name given as ``pretrained``.
    """

    trainable = True

    def __init__(
        self,
        sources: Sequence[str],
        sample_rate: int = 44100,
        audio_channels: int = 2,
        nfft: int = 4096,
        depth: int = 6,
        channels: int = 48,
        pretrained: str | None = None,
        download: bool = False,
        load_weights: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        declare_contract(self, sources, sample_rate, audio_channels)
        self.pretrained = pretrained is not None and load_weights
        self.bundle = pretrained

        if pretrained is None:
            model_sources = self.sources
            self.model = torchaudio.models.HDemucs(
                sources=model_sources,
                audio_channels=self.audio_channels,
                channels=channels,
                nfft=nfft,
                depth=depth,
                **kwargs,
            )
        else:
            bundle = _bundle(pretrained)
            asked = {
                "nfft": nfft,
                "depth": depth,
                "channels": channels,
                "audio_channels": self.audio_channels,
            }
            if asked != _BUNDLE_ARCH or kwargs:
                raise ValueError(
                    f"Pretrained {pretrained} fixes the architecture to {_BUNDLE_ARCH}; got "
                    f"{asked} and extra arguments {sorted(kwargs)}. Remove the overrides."
                )
            if self.sample_rate != bundle.sample_rate:
                raise ValueError(
                    f"Pretrained {pretrained} was trained at {bundle.sample_rate} Hz but the "
                    f"data is at {self.sample_rate} Hz: resample the dataset to "
                    f"{bundle.sample_rate} Hz (data.sample_rate) or train from scratch."
                )
            model_sources = _bundle_sources(bundle)
            missing = [name for name in self.sources if name not in model_sources]
            if missing:
                raise ValueError(
                    f"Pretrained {pretrained} separates {model_sources}; it has no "
                    f"{missing}. Choose data.sources among those."
                )
            if pretrained == "HDEMUCS_HIGH_MUSDB_PLUS":
                log.warning("%s was %s.", pretrained, BUNDLES[pretrained])
            self.model = bundle._model_factory_func()
            if load_weights:
                self.model.load_state_dict(_load_state_dict(pretrained, download))

        # torchaudio builds a GroupNorm in the "empty" time encoder layer (the one whose
        # output is injected into the frequency branch) but never calls it. Frozen, it cannot
        # trip DDP's unused-parameter check; its weights stay in the state dict.
        for layer in self.model.time_encoder:
            if layer.empty:
                layer.norm1.requires_grad_(False)

        # Output order: the configured sources, picked from the inner model's order.
        order = [model_sources.index(name) for name in self.sources]
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self._identity_order = order == list(range(len(model_sources)))
        # Below this length torchaudio's padding arithmetic fails (its reflect pad of
        # 1.5 hops no longer fits); 3 hops is safely above it. Longer inputs pass untouched.
        self.min_length = 3 * (self.model.nfft // 4)

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
        delta = max(0, self.min_length - length)
        x = nn.functional.pad(mix, (delta // 2, delta - delta // 2))
        out = self.model(x)[..., delta // 2 : delta // 2 + length]
        if not self._identity_order:
            out = out.index_select(1, self.order)
        return out

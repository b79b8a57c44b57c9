"""The contract every separator keeps: `forward(mix[B, C, T]) -> stems[B, S, C, T]`.

Training, validation, evaluation, separation and export all read a separator through
`check_separator`, the one place that knows what a separator declares and what it defaults to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from mss.errors import ConfigError


@runtime_checkable
class SeparationModel(Protocol):
    """What a separator declares (class or instance attributes) besides `forward`.

    Attributes:
        sources: stem names, in the order of the output's S axis.
        sample_rate: the rate it works at; nothing is resampled for it but by `mss.Separator`.
        audio_channels: channels of the mixture and of each stem.
        trainable: False for fixed baselines with nothing to learn (default True).
        whole_track: True when it needs the whole song at once (DSP baselines: no chunking,
            no streaming; default False).
        pretrained: True when it was built with its own trained weights (default False).
        segment: seconds of input it is built for when it takes no other length (an exported
            model's fixed input): chunked inference then uses it (default None: any length).
    """

    sources: Sequence[str]
    sample_rate: int
    audio_channels: int

    def __call__(self, mix: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Contract:
    """A separator's declarations, read and checked once."""

    sources: list[str]
    sample_rate: int
    audio_channels: int
    trainable: bool = True
    whole_track: bool = False
    pretrained: bool = False
    segment: float | None = None


def check_separator(
    model: object,
    sources: Sequence[str] | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> Contract:
    """Read `model`'s contract; check it against the data's sources, rate and channels.

    Raises:
        ConfigError: an attribute of the contract is missing, or the separator produces other
            sources (names or order), works at another rate, or takes other channels than
            the data has.
    """
    name = type(model).__name__
    missing = [a for a in ("sources", "sample_rate", "audio_channels") if not hasattr(model, a)]
    if missing:
        raise ConfigError(
            f"{name} does not declare {', '.join(missing)}; every separator must (see "
            "mss/models/_contract.py)"
        )
    contract = Contract(
        sources=[str(s) for s in model.sources],
        sample_rate=int(model.sample_rate),
        audio_channels=int(model.audio_channels),
        trainable=bool(getattr(model, "trainable", True)),
        whole_track=bool(getattr(model, "whole_track", False)),
        pretrained=bool(getattr(model, "pretrained", False)),
        segment=None if getattr(model, "segment", None) is None else float(model.segment),
    )
    if sources is not None and contract.sources != [str(s) for s in sources]:
        raise ConfigError(
            f"{name} separates into {contract.sources} but the data has sources {list(sources)}; "
            "they must be the same names in the same order (set data.sources to the model's "
            "sources or use a model trained on this data's sources)"
        )
    if sample_rate is not None and contract.sample_rate != int(sample_rate):
        raise ConfigError(
            f"{name} works at {contract.sample_rate} Hz but the data is at {sample_rate} Hz; "
            "nothing is resampled, so they must match"
        )
    if channels is not None and contract.audio_channels != int(channels):
        raise ConfigError(
            f"{name} expects {contract.audio_channels} channel(s), the data has {channels}"
        )
    return contract


def declare_contract(
    model: object, sources: Sequence[str], sample_rate: int, audio_channels: int
) -> None:
    """Set the contract's three attributes on a separator being built (its `__init__`).

    Raises:
        ValueError: `sources` is empty.
    """
    if not sources:
        raise ValueError(f"{type(model).__name__} needs at least one source name.")
    model.sources = list(sources)
    model.sample_rate = int(sample_rate)
    model.audio_channels = int(audio_channels)


def check_mix(mix: Tensor, audio_channels: int) -> None:
    """Raise a clear ValueError unless `mix` is `[batch, audio_channels, frames >= 1]`."""
    if mix.ndim != 3:
        raise ValueError(
            "Expected 3D tensor with dimensions (batch, channel, frames). "
            f"Found: {tuple(mix.shape)}"
        )
    if mix.shape[1] != audio_channels:
        raise ValueError(
            f"Expected {audio_channels} audio channels, found {mix.shape[1]} "
            f"(input shape {tuple(mix.shape)})."
        )
    if mix.shape[-1] < 1:
        raise ValueError(f"Expected at least one frame. Found: {tuple(mix.shape)}")

"""How a separator runs on whole songs: the one set of inference settings and the device.

`conf/inference/default.yaml` holds the same defaults for the command lines (eval.py,
separate.py, validation in train.py, `test=true`); `tests/test_configs.py` checks that the two
agree, so changing one without the other fails.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from mss.errors import ConfigError

__all__ = ["InferenceSettings", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceSettings:
    """Chunked overlap-add inference (`mss.apply.separate`, `separate_stream`).

    Attributes:
        segment: seconds per chunk; None separates whole songs in one call.
        overlap: fraction of a chunk shared with the next, in [0, 1).
        batch_size: chunks per forward call.
        shifts: Demucs's test-time augmentation, the number of randomly shifted runs averaged
            (0 = one plain run; costs `shifts` times the compute).
        seed: seeds the shifts, so that a run is reproducible.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    """

    segment: float | None = 10.0
    overlap: float = 0.25
    batch_size: int = 1
    shifts: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.segment is not None and not self.segment > 0:
            raise ConfigError(f"inference.segment must be > 0 seconds or null, got {self.segment}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"inference.overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ConfigError(f"inference.batch_size must be >= 1, got {self.batch_size}")
        if self.shifts < 0:
            raise ConfigError(f"inference.shifts must be >= 0, got {self.shifts}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> InferenceSettings:
        """From a config holding the settings' keys (eval.py's and separate.py's top level,
        train.py's `inference`); other keys are not read, missing ones keep their defaults."""
        config = {f.name: config[f.name] for f in fields(cls) if config and f.name in config}
        segment = config.get("segment", cls.segment)
        return cls(
            segment=None if segment is None else float(segment),
            overlap=float(config.get("overlap", cls.overlap)),
            batch_size=int(config.get("batch_size", cls.batch_size)),
            shifts=int(config.get("shifts", cls.shifts)),
            seed=int(config.get("seed", cls.seed)),
            device=str(config.get("device", cls.device)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_model(self, contract: Any) -> InferenceSettings:
        """These settings as a separator's contract allows them: whole songs for those that
        need them (`whole_track`), the model's own segment for those that take no other
        length (`segment`, exported models)."""
        if contract.whole_track and self.segment is not None:
            log.info("the separator takes whole songs: segment=%s ignored", self.segment)
            return replace(self, segment=None)
        if contract.segment is not None and self.segment != contract.segment:
            log.info(
                "the separator takes segments of %g s: segment=%s replaced",
                contract.segment, self.segment,
            )  # fmt: skip
            return replace(self, segment=contract.segment)
        return self

    def chunking(self) -> dict[str, Any]:
        """Keyword arguments of `mss.apply.separate` / `separate_stream` but the device."""
        return {
            "segment": self.segment,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "shifts": self.shifts,
            "seed": self.seed,
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`"auto"` or None: CUDA when available, else the CPU; anything else as torch reads it.

    Raises:
        ConfigError: a device name torch does not know, or CUDA asked for where there is none.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            f"device={device}: not a device name (use auto, cpu, cuda or cuda:N)"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device}: CUDA is not available here; use device=cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={device}: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    return resolved

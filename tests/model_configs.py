"""conf/model/<name>.yaml composed the way train.py composes it, for the model tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
SOURCES = ["drums", "bass", "other", "vocals"]


def model_config(
    name: str,
    overrides=(),
    sources=SOURCES,
    sample_rate: int = 44100,
    segment: float | None = None,
) -> DictConfig:
    """The model group with a minimal data group (sources, sample rate, optional segment in
    seconds), which the model configs interpolate."""
    data = [f"+data.sources=[{','.join(sources)}]", f"+data.sample_rate={sample_rate}"]
    if segment is not None:
        data.append(f"+data.segment={segment}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+model={name}", *data, *overrides]).model


def model_target(name: str) -> str:
    """The `_target_` of conf/model/<name>.yaml, composed without a data group."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+model={name}"]).model._target_

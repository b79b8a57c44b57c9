"""Build the lists of callbacks and loggers from their Hydra groups."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group that maps names to `_target_` configs.

    An empty or missing group (e.g. `logger=none`) gives an empty list.
    """
    if not group:
        return []
    if not isinstance(group, DictConfig):
        raise TypeError(f"expected a mapping of name -> config, got {type(group).__name__}")
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]

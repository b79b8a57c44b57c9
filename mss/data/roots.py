"""Extra dataset roots that train together with ``data.root``: their config entries, checked.

``data.extra_roots`` is a list; each entry is a path, or a mapping with ``root`` (required),
``weight`` (default 1) and ``validation_tracks`` (default ``[]``: all of its ``train/`` trains).
A mistake in an entry is one :class:`~mss.errors.ConfigError` naming its key, e.g.
``data.extra_roots[1].weight``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mss.errors import ConfigError

ENTRY_KEYS = ("root", "weight", "validation_tracks")


@dataclass(frozen=True)
class ExtraRoot:
    """One entry of ``data.extra_roots``; ``key`` (``data.extra_roots[i]``) names it in errors."""

    root: str
    weight: float
    validation_tracks: tuple[str, ...]
    key: str


def check_weight(weight, key: str) -> float:
    """``weight`` as a float, or a ConfigError naming ``key`` unless it is finite and > 0."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        value = math.nan
    # bool is an int: `weight: true` is a typo, not a weight of 1
    if isinstance(weight, bool) or not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{key} must be a positive number (a relative sampling weight), got {weight!r}"
        )
    return value


def parse_extra_roots(entries: Sequence[str | os.PathLike | Mapping] | None) -> list[ExtraRoot]:
    """Check ``data.extra_roots`` and return its entries in order."""
    if entries is None:
        return []
    if isinstance(entries, (str, os.PathLike, Mapping)):
        raise ConfigError(
            "data.extra_roots must be a list, e.g. data.extra_roots=[{root: /data/mine, "
            f"weight: 0.3}}], got {entries!r}"
        )
    parsed = []
    for i, entry in enumerate(entries):
        key = f"data.extra_roots[{i}]"
        if isinstance(entry, (str, os.PathLike)):
            entry = {"root": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key} must be a path or {{root: PATH, weight: W}}, got {entry!r}")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; the keys are {list(ENTRY_KEYS)}")
        if entry.get("root") in (None, ""):
            raise ConfigError(f"{key}.root is missing: set the dataset root of this entry")
        names = entry.get("validation_tracks") or []
        if isinstance(names, str):
            raise ConfigError(
                f"{key}.validation_tracks must be a list of track names, got {names!r}"
            )
        parsed.append(
            ExtraRoot(
                root=os.fspath(entry["root"]),
                weight=check_weight(entry.get("weight", 1.0), f"{key}.weight"),
                validation_tracks=tuple(str(n) for n in names),
                key=key,
            )
        )
    return parsed

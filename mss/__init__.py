"""mss: train, evaluate and apply music source separators.

`mss.Separator` splits songs from Python (see mss/separator.py); it is imported on first use,
so that `import mss.errors` and the like stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Separator"]


def __getattr__(name: str) -> Any:
    if name == "Separator":
        from mss.separator import Separator

        return Separator
    raise AttributeError(f"module 'mss' has no attribute {name!r}")

"""Regions that stay in full precision inside a mixed-precision step.

Lightning's ``precision=bf16-mixed|16-mixed`` runs the training and validation steps under
``torch.autocast``; spectral transforms, the Wiener filter and the loss must not follow it
(no half-precision CPU FFT, and fp16 spectrogram magnitudes and covariances overflow or
underflow). Their callers also cast half-precision inputs to float32.
"""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)`` while autocast is on, else nothing.

    Entering the context only when autocast is active keeps it out of traced and exported
    graphs (``mss.export``), where it would be one more operator to translate.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()

"""Errors that mean "the user gave something wrong": every entry point shows them as one line.

Raise a subclass of `UserError` (with a message that names the file or key and what to do)
wherever user input is found bad; `mss.cli` turns it into `<script>: error: <message>` and exit
status 2, with the traceback only under `HYDRA_FULL_ERROR=1`. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad user input: a file, a config value, a checkpoint, an output folder."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not exist, cannot be read safely, or does not fit the task."""


class AudioFileError(UserError, ValueError):
    """An audio file that cannot be read or written as asked (format, channels, samples)."""


class ConfigError(UserError, ValueError):
    """A config value or combination of values that cannot work."""


class NonFiniteError(UserError):
    """Training produced NaN or Inf (loss, gradients or weights); the weights were kept."""

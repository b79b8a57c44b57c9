"""Output folders checked before any work is done, so a long run never fails at its end."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from mss.errors import UserError


def ensure_writable_dir(path: str | os.PathLike, key: str, create: bool = True) -> Path:
    """Check that files can be written in the folder `path`, creating it when `create`.

    With `create=False` nothing is made: the nearest existing parent must be a folder that
    takes a new file (for folders another program creates later, such as Hydra's run folder,
    whose name holds the time).

    Raises:
        UserError: naming `key` and the folder, when it cannot be created or written.
    """
    path = Path(path).expanduser()
    error = write_probe(path, create)
    if error is not None:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"{key}={path}: cannot write there ({reason}); choose another folder for {key}"
        ) from error
    return path


def write_probe(path: Path, create: bool = True) -> OSError | None:
    """Create the folder `path` when `create` (else take its nearest existing parent) and
    write and remove a file there; the error that stopped it, or None.

    A real write, rather than `os.access`, which says yes to root on a read-only mount or a
    root-squashed network share.
    """
    target = path
    if not create:
        while not target.exists() and target != target.parent:
            target = target.parent
    probe = target / f".mss-write-test-{uuid.uuid4().hex[:8]}"
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as error:
        return error
    return None

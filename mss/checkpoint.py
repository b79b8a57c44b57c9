"""Checkpoints are data, never code: safe loading, atomic writing, separators rebuilt by name.

A `.ckpt` is a pickle. Unpickling an arbitrary file runs whatever callables it names, so every
checkpoint mss reads (evaluation, separation, resuming training) goes through
`torch.load(weights_only=True)`: only tensors and plain containers are rebuilt, and a file that
names anything else is refused before any of its code runs. The network config a checkpoint
carries is checked too: it may only build separators from `mss.models` (or targets the user
allows explicitly), since Hydra would otherwise call any `_target_` it names.
"""

from __future__ import annotations

import os
import pickle
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from mss.errors import CheckpointError, ConfigError

__all__ = [
    "SafeCheckpointIO",
    "check_net_config",
    "load_checkpoint",
    "load_separator",
    "load_separator_from_config",
    "save_checkpoint_atomic",
]

# Separators a checkpoint may build without the user allowing more.
TRUSTED_PREFIX = "mss.models."


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`; nothing in the file runs.

    Raises:
        CheckpointError: the file does not exist, is not a PyTorch checkpoint, or needs
            anything but tensors and plain Python containers to be unpickled (then none of the
            code it names has run).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused: loading it would call {unsafe.group(1)}, which is code, not "
                "data (only tensors and plain containers are read, as in checkpoints written "
                "by mss train.py)"
            ) from error
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(error))
        raise CheckpointError(
            f"{path}: refused: not a checkpoint of plain data "
            f"({detail.group(1).strip() if detail else 'unpickling failed'}); none of it was run"
        ) from error
    except Exception as error:  # noqa: BLE001 - zip, I/O and format errors mean the same here
        first = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({first or type(error).__name__})"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(checkpoint).__name__}, not a training checkpoint (a dict)"
        )
    return dict(checkpoint)


def save_checkpoint_atomic(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `checkpoint` to `path` so that a kill at any moment leaves the old file intact.

    The bytes go to a hidden temporary file beside `path`, are flushed to disk, and the file is
    renamed over `path` (`os.replace` is atomic on one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(dict(checkpoint), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class SafeCheckpointIO(CheckpointIO):
    """Lightning's checkpoint reader and writer for mss: atomic saves, `weights_only` loads.

    Used by the trainer (`conf/trainer/default.yaml`), so resuming with `ckpt_path=` reads the
    file as safely as `eval.py` does, and a run killed while saving keeps its previous
    `last.ckpt`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_checkpoint_atomic(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(
                f"{path}: mss reads checkpoints with weights_only=True only (a checkpoint is data)"
            )
        return load_checkpoint(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


def _targets(node: Any, where: str = "") -> Iterable[tuple[str, Any]]:
    """Every `_target_` value in a nested config, with the key path that holds it."""
    if isinstance(node, DictConfig | dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield here, value
            else:
                yield from _targets(value, here)
    elif isinstance(node, ListConfig | list | tuple):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def check_net_config(
    net_config: DictConfig, source: str | os.PathLike, allowed_targets: Sequence[str] = ()
) -> None:
    """Refuse a network config that would build anything but a separator of `mss.models`.

    Args:
        net_config: the config saved in a checkpoint (plain values, interpolations resolved).
        source: the file it came from, for the message.
        allowed_targets: further `_target_` names (exact) or prefixes ending in "." the user
            trusts, e.g. their own models package.
    Raises:
        CheckpointError: naming the key and the target that is not allowed.
    """
    text = OmegaConf.to_yaml(net_config)
    if "${" in text:
        raise CheckpointError(
            f"{source}: its network config holds interpolations (${{...}}); mss writes resolved "
            "configs only, so this file was not written by mss train.py"
        )
    allowed = (TRUSTED_PREFIX, *allowed_targets)
    found = list(_targets(OmegaConf.to_container(net_config)))
    if not found or found[0][0] != "_target_":
        raise CheckpointError(f"{source}: its network config names no `_target_` to build")
    for key, target in found:
        ok = isinstance(target, str) and any(
            target.startswith(a) if a.endswith(".") else target == a for a in allowed
        )
        if not ok:
            raise CheckpointError(
                f"{source}: refused, its network config asks to build {target!r} (at {key}); "
                f"checkpoints may only build separators of {TRUSTED_PREFIX}* (add a trusted "
                "target with allowed_targets=[...] if this is your own model)"
            )


def load_separator(
    ckpt_path: str | os.PathLike,
    map_location: Any = "cpu",
    allowed_targets: Sequence[str] = (),
    net_overrides: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Rebuild the separator saved in a training checkpoint, in eval mode.

    The checkpoint carries the Hydra config of its network (`net_config`), so no other file or
    config is needed. The file is read as data (`load_checkpoint`) and the config may only name
    separators of `mss.models` or `allowed_targets` (`check_net_config`).

    `net_overrides` changes settings of that config before the network is built, for what a
    trained network leaves free at inference (`{"wiener_iterations": 1}` for the U-Net,
    `{"niter": 0}` for Open-Unmix). Only keys the config has (dotted for nested ones); the
    result passes the same trust check, and weights that no longer fit are refused.
    """
    from hydra.utils import instantiate

    checkpoint = load_checkpoint(ckpt_path, map_location=map_location)
    hparams = checkpoint.get("hyper_parameters") or {}
    net_config = hparams.get("net_config") if isinstance(hparams, Mapping) else None
    if not isinstance(net_config, str) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{ckpt_path}: no `net_config` and `state_dict` in it; it was not written by mss "
            "train.py, so the network cannot be rebuilt from it"
        )
    try:
        net_config = OmegaConf.create(net_config)
    except Exception as error:  # noqa: BLE001 - a malformed YAML text is a bad file
        raise CheckpointError(f"{ckpt_path}: its network config is not valid YAML") from error
    if not isinstance(net_config, DictConfig):
        raise CheckpointError(f"{ckpt_path}: its network config is not a mapping")
    apply_net_overrides(net_config, net_overrides or {}, ckpt_path)
    check_net_config(net_config, ckpt_path, allowed_targets)
    if net_config.get("pretrained"):
        # models that fetch pretrained weights when built (hdemucs_pretrained): the checkpoint
        # carries the fine-tuned weights, so build the architecture only, without the bundle file
        net_config.load_weights = False
    net = instantiate(net_config)
    prefix = "net."
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{ckpt_path}: its weights do not fit the network its config builds ({first})"
        ) from error
    return net.eval()


_MISSING = object()


def apply_net_overrides(
    net_config: DictConfig, overrides: Mapping[str, Any], source: str | os.PathLike
) -> None:
    """Set `overrides` (dotted keys) in a checkpoint's network config, in place; a key the
    config does not have, or one that would change what is built, is a `ConfigError`."""
    for key, value in overrides.items():
        key = str(key)
        if key.split(".")[-1] == "_target_":
            raise ConfigError(
                f"net_overrides: {key!r} would change the network {source} builds; only its "
                "settings may be overridden"
            )
        if OmegaConf.select(net_config, key, default=_MISSING) is _MISSING:
            settings = ", ".join(k for k in net_config if k != "_target_")
            raise ConfigError(
                f"net_overrides: {key!r} is not a setting of the network in {source} "
                f"(its settings: {settings})"
            )
        OmegaConf.update(net_config, key, value, merge=False)


def load_separator_from_config(cfg: Any, ckpt_path: str | os.PathLike) -> nn.Module:
    """`load_separator` with the `allowed_targets` and `net_overrides` of an eval, separate or
    export config."""
    overrides = cfg.get("net_overrides") or {}
    if isinstance(overrides, DictConfig):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            "net_overrides must map settings of the checkpoint's network to values, e.g. "
            f"net_overrides={{wiener_iterations:1}}; got {overrides!r}"
        )
    allowed = list(cfg.get("allowed_targets") or [])
    return load_separator(ckpt_path, allowed_targets=allowed, net_overrides=overrides)

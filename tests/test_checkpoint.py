"""Checkpoints are data: nothing a file holds runs on load, and saves survive a kill."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mss.checkpoint import (
    SafeCheckpointIO,
    check_net_config,
    load_checkpoint,
    load_separator,
    save_checkpoint_atomic,
)
from mss.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = {"sources": ["drums", "bass", "other", "vocals"], "channels": 4}


class CreatesFile:
    """Unpickling this object runs `open(marker, "w")`: the code a malicious file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def simple_demucs_checkpoint(path: Path, net_config: dict | str | None = None) -> Path:
    """A checkpoint in the layout train.py writes, for a tiny simple Demucs."""
    from mss.models.simple_demucs import SimpleDemucs

    config = {"_target_": "mss.models.simple_demucs.SimpleDemucs", **TINY}
    return save_in_train_layout(
        path, SimpleDemucs(**TINY), config if net_config is None else net_config
    )


def save_in_train_layout(path: Path, net: torch.nn.Module, net_config: dict | str) -> Path:
    """`net` saved as train.py saves it: its weights under `net.` and its network config."""
    if isinstance(net_config, dict):
        net_config = OmegaConf.to_yaml(OmegaConf.create(net_config))
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"net_config": net_config}}, path)
    return path


def test_a_pickle_that_creates_a_file_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {}, "payload": CreatesFile(marker)}))
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused"):
        load_checkpoint(evil)
    # protocol 2, the one torch's own unpickler reads up to the call
    evil.write_bytes(pickle.dumps({"payload": CreatesFile(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: loading it would call"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_separator(evil)
    assert not marker.exists()


def test_a_zip_checkpoint_holding_code_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = simple_demucs_checkpoint(tmp_path / "good.ckpt")
    checkpoint = torch.load(evil, weights_only=True)
    checkpoint["hyper_parameters"]["extra"] = CreatesFile(marker)
    torch.save(checkpoint, evil)
    with pytest.raises(CheckpointError, match=r"good\.ckpt: refused: loading it would call .*open"):
        load_separator(evil)
    with pytest.raises(CheckpointError, match="refused"):
        SafeCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()


def test_a_plain_checkpoint_loads_and_rebuilds_its_separator(tmp_path):
    ckpt = simple_demucs_checkpoint(tmp_path / "ok.ckpt")
    separator = load_separator(ckpt)
    assert type(separator).__name__ == "SimpleDemucs" and not separator.training
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, tensor in separator.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"net.{name}"])


def unet_checkpoint(path: Path, **settings) -> Path:
    """A checkpoint in the layout train.py writes, for a tiny spectrogram U-Net."""
    from mss.models.unet import UNet

    config = {"_target_": "mss.models.unet.UNet", "sources": TINY["sources"], "n_fft": 256,
              "hop_length": 64, "channels": [8, 16], "bottleneck": 16, "lstm_layers": 1,
              **settings}  # fmt: skip
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in config.items() if k != "_target_"})
    return save_in_train_layout(path, net, config)


def test_net_overrides_change_an_inference_setting_and_keep_the_weights(tmp_path):
    ckpt = unet_checkpoint(tmp_path / "unet.ckpt", wiener_iterations=0)
    plain = load_separator(ckpt)
    filtered = load_separator(ckpt, net_overrides={"wiener_iterations": 1})
    assert (plain.wiener_iterations, filtered.wiener_iterations) == (0, 1)
    for name, tensor in filtered.state_dict().items():
        torch.testing.assert_close(tensor, plain.state_dict()[name])
    # the same network as one built with the setting: the override reached the constructor
    built = unet_checkpoint(tmp_path / "built.ckpt", wiener_iterations=1)
    mix = torch.randn(1, 2, 4000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(filtered(mix), load_separator(built)(mix))
        assert not torch.allclose(filtered(mix), plain(mix), atol=1e-4)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"wiener_iterationz": 1}, ConfigError,
         r"net_overrides: 'wiener_iterationz' is not a setting of the network in .*unet\.ckpt "
         r"\(its settings: sources, n_fft"),
        ({"_target_": "os.system"}, ConfigError, r"'_target_' would change the network"),
        ({"channels": [8, 32]}, CheckpointError, r"unet\.ckpt: its weights do not fit"),
    ],
)  # fmt: skip
def test_net_overrides_refuse_unknown_keys_targets_and_shapes(tmp_path, overrides, error, message):
    ckpt = unet_checkpoint(tmp_path / "unet.ckpt")
    with pytest.raises(error, match=message):
        load_separator(ckpt, net_overrides=overrides)


@pytest.mark.parametrize(
    "net_config, key",
    [
        ({"_target_": "os.system", "command": "touch pwned"}, "_target_"),
        ({"_target_": "builtins.exec", "_args_": ["print(1)"]}, "_target_"),
        # a trusted separator whose argument builds something else
        (
            {
                "_target_": "mss.models.simple_demucs.SimpleDemucs",
                "channels": {"_target_": "subprocess.call", "args": ["true"]},
            },
            "channels._target_",
        ),
        # a name that only starts like the trusted package
        ({"_target_": "mss.modelsx.Evil"}, "_target_"),
    ],
)
def test_a_network_config_may_only_build_mss_separators(tmp_path, net_config, key, monkeypatch):
    ckpt = simple_demucs_checkpoint(tmp_path / "x.ckpt", net_config)
    built = []
    monkeypatch.setattr("hydra.utils.instantiate", lambda *a, **k: built.append(a))
    with pytest.raises(CheckpointError, match=rf"x\.ckpt: refused.*at {key}\)"):
        load_separator(ckpt)
    assert built == []  # refused before Hydra saw it


def test_interpolations_in_a_network_config_are_refused(tmp_path):
    config = "_target_: mss.models.simple_demucs.SimpleDemucs\nchannels: ${oc.env:HOME}\n"
    with pytest.raises(CheckpointError, match="interpolations"):
        load_separator(simple_demucs_checkpoint(tmp_path / "i.ckpt", config))


def test_allowed_targets_admit_a_users_own_model():
    config = OmegaConf.create({"_target_": "mylab.models.Net", "width": 8})
    with pytest.raises(CheckpointError, match="mylab.models.Net"):
        check_net_config(config, "c.ckpt")
    check_net_config(config, "c.ckpt", allowed_targets=["mylab.models."])
    check_net_config(config, "c.ckpt", allowed_targets=["mylab.models.Net"])
    with pytest.raises(CheckpointError):
        check_net_config(config, "c.ckpt", allowed_targets=["mylab.models.Ne"])


def test_unreadable_and_foreign_checkpoints_get_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*missing.ckpt"):
        load_separator(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: refused: not a checkpoint of plain"):
        load_separator(junk)
    good = simple_demucs_checkpoint(tmp_path / "cut.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: not a readable PyTorch checkpoint"):
        load_separator(tmp_path / "cut.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="no `net_config`"):
        load_separator(foreign)
    mismatched = simple_demucs_checkpoint(
        tmp_path / "wide.ckpt",
        {"_target_": "mss.models.simple_demucs.SimpleDemucs", **TINY, "channels": 8},
    )
    with pytest.raises(CheckpointError, match=r"wide\.ckpt: its weights do not fit"):
        load_separator(mismatched)


def test_a_kill_while_saving_leaves_the_previous_checkpoint_readable(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint_atomic({"step": torch.tensor(1)}, path)
    # The child starts writing a second checkpoint and is killed half way through the bytes.
    child = textwrap.dedent(
        f"""
        import os, signal, torch
        from mss.checkpoint import save_checkpoint_atomic
        real_save = torch.save
        def dying_save(obj, file):
            real_save(obj, file)
            file.truncate(file.tell() // 2)
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint_atomic({{"step": torch.tensor(2), "big": torch.zeros(100_000)}},
                               {str(path)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    assert int(load_checkpoint(path)["step"]) == 1
    # the next save replaces it and sweeps nothing it should not
    save_checkpoint_atomic({"step": torch.tensor(3)}, path)
    assert int(load_checkpoint(path)["step"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["last.ckpt"]


def test_safe_checkpoint_io_refuses_weights_only_false(tmp_path):
    path = save_checkpoint_atomic({"a": torch.ones(1)}, tmp_path / "a.ckpt")
    io = SafeCheckpointIO()
    assert io.load_checkpoint(path)["a"].item() == 1
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        io.load_checkpoint(path, weights_only=False)
    io.remove_checkpoint(path)
    assert not os.path.exists(path)

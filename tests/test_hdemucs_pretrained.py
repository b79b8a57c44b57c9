"""Offline loading of torchaudio's pretrained HDemucs weights (mss/models/hdemucs.py).

A state dict of the right shapes (torchaudio's hdemucs_high, fixed seed) is saved where the
torchaudio bundle caches its file, under a temporary TORCH_HOME; nothing is downloaded.
"""

import logging
import os

import pytest
import torch
import torchaudio
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from mss.models.hdemucs import HDemucs, bundle_weights_path, bundle_weights_url
from tests.model_configs import model_config

BUNDLE_SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds fake weights for both bundles (one file, linked)."""
    home = tmp_path_factory.mktemp("torch_home")
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    torch.manual_seed(1234)
    reference = torchaudio.models.hdemucs_high(BUNDLE_SOURCES).eval()
    path = bundle_weights_path("HDEMUCS_HIGH_MUSDB")
    assert path.is_relative_to(home)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    os.link(path, bundle_weights_path("HDEMUCS_HIGH_MUSDB_PLUS"))
    yield reference
    if old is None:
        del os.environ["TORCH_HOME"]
    else:
        os.environ["TORCH_HOME"] = old


def _compose(sources=BUNDLE_SOURCES, sample_rate=44100, overrides=()):
    return instantiate(model_config("hdemucs_pretrained", overrides, sources, sample_rate))


@pytest.fixture(scope="module")
def mix():
    return torch.randn(1, 2, 3 * 4096 + 37, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference_out(torch_home, mix):
    with torch.no_grad():
        return torch_home(mix)


@pytest.mark.slow
def test_loads_bundle_file_and_equals_torchaudio(torch_home, mix, reference_out):
    model = _compose().eval()
    assert model.pretrained is True and model.trainable is True
    assert model.sources == BUNDLE_SOURCES and model.sample_rate == 44100
    with torch.no_grad():
        assert torch.equal(model(mix), reference_out)


@pytest.mark.slow
def test_reorders_to_configured_sources(torch_home, mix, reference_out):
    model = _compose(sources=["vocals", "drums"]).eval()
    with torch.no_grad():
        assert torch.equal(model(mix), reference_out[:, [3, 0]])


@pytest.mark.slow
def test_plus_bundle_warns_about_the_test_set(torch_home, caplog):
    with caplog.at_level(logging.WARNING, logger="mss.models.hdemucs"):
        model = HDemucs(BUNDLE_SOURCES, pretrained="HDEMUCS_HIGH_MUSDB_PLUS")
    assert model.pretrained
    assert any("test set" in r.getMessage() for r in caplog.records)


def test_missing_sources_are_named(torch_home):
    with pytest.raises(ValueError, match=r"no \['accompaniment'\]"):
        HDemucs(["vocals", "accompaniment"], pretrained="HDEMUCS_HIGH_MUSDB")


def test_sample_rate_mismatch_is_refused(torch_home):
    with pytest.raises(ValueError, match="trained at 44100 Hz but the data is at 22050 Hz"):
        HDemucs(BUNDLE_SOURCES, sample_rate=22050, pretrained="HDEMUCS_HIGH_MUSDB")


def test_architecture_overrides_are_refused(torch_home):
    with pytest.raises(ValueError, match="fixes the architecture"):
        HDemucs(BUNDLE_SOURCES, nfft=2048, pretrained="HDEMUCS_HIGH_MUSDB")


def test_missing_file_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "torchaudio" / "models" / "hdemucs_high_musdbhq_only.pt"
    assert bundle_weights_path("HDEMUCS_HIGH_MUSDB") == path
    url = "https://download.pytorch.org/torchaudio/models/hdemucs_high_musdbhq_only.pt"
    assert bundle_weights_url("HDEMUCS_HIGH_MUSDB") == url
    with pytest.raises(InstantiationException) as info:
        _compose()
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert str(path) in str(info.value) and url in str(info.value)


def test_failed_download_ends_in_the_same_error(tmp_path, monkeypatch):
    """download=True: a failing download (no network) still ends in the clear error."""

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchaudio.utils, "_download_asset", offline)
    with pytest.raises(FileNotFoundError, match="Download https://download.pytorch.org"):
        HDemucs(BUNDLE_SOURCES, pretrained="HDEMUCS_HIGH_MUSDB", download=True)


def test_checkpoint_rebuild_skips_the_bundle_file(tmp_path, monkeypatch):
    """load_weights=False: bundle architecture and order, no file needed (weights come later)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = HDemucs(["vocals", "bass"], pretrained="HDEMUCS_HIGH_MUSDB", load_weights=False)
    assert model.pretrained is False and model.bundle == "HDEMUCS_HIGH_MUSDB"
    assert model.model.sources == BUNDLE_SOURCES and model.order.tolist() == [3, 1]


def test_unknown_bundle():
    with pytest.raises(ValueError, match="Unknown pretrained bundle"):
        HDemucs(BUNDLE_SOURCES, pretrained="HDEMUCS_LOW")


def test_fine_tuned_checkpoint_rebuilds_without_the_bundle_file(tmp_path, monkeypatch):
    """A checkpoint of a fine-tuned hdemucs_pretrained carries its weights: load_separator must
    not need torchaudio's file (here TORCH_HOME is empty)."""
    from omegaconf import OmegaConf

    from mss.checkpoint import load_separator

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    net = HDemucs(["vocals", "drums"], pretrained="HDEMUCS_HIGH_MUSDB", load_weights=False)
    config = {
        "_target_": "mss.models.hdemucs.HDemucs",
        "sources": ["vocals", "drums"],
        "pretrained": "HDEMUCS_HIGH_MUSDB",
        "download": False,
    }
    ckpt = tmp_path / "fine_tuned.ckpt"
    torch.save(
        {
            "hyper_parameters": {"net_config": OmegaConf.to_yaml(config)},
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        },
        ckpt,
    )
    separator = load_separator(ckpt)
    assert separator.sources == ["vocals", "drums"]
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(separator.state_dict()[name], tensor)

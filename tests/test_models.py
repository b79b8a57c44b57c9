"""Separator contract for every trainable model config in conf/model (mss/models)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mss.losses import SeparationLoss
from mss.models.simple_demucs import SimpleDemucs

CONF = Path(__file__).resolve().parents[1] / "conf"
SOURCES = ["drums", "bass", "other", "vocals"]

# Each config this file covers, with overrides that make it tiny enough for CPU tests.
TINY = {
    "simple_demucs": ["model.channels=4", "model.lstm_hidden=8"],
}


def compose_model(name, overrides=(), sources=SOURCES, sample_rate=44100):
    """Compose conf/model/<name>.yaml the way train.py does, with a minimal data group."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            overrides=[
                f"+model={name}",
                f"+data.sources=[{','.join(sources)}]",
                f"+data.sample_rate={sample_rate}",
                *overrides,
            ]
        )
    return instantiate(cfg.model)


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    torch.manual_seed(0)
    return request.param, compose_model(request.param, TINY[request.param])


@pytest.mark.parametrize("length", [1000, 44100 + 37])
def test_contract_shapes_for_odd_lengths(tiny, length):
    _, model = tiny
    model.eval()
    mix = torch.randn(2, 2, length)
    with torch.no_grad():
        out = model(mix)
    assert out.shape == (2, len(SOURCES), 2, length)
    assert out.isfinite().all()
    assert model.sources == SOURCES
    assert model.sample_rate == 44100
    assert model.audio_channels == 2
    assert model.trainable is True


def test_bad_input_raises_value_error(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="Expected 3D tensor"):
        model(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 3, 1000))


def test_batch_items_are_independent(tiny):
    """Item 0 of a batch equals the item alone: no layout bug mixes batch and time."""
    _, model = tiny
    model.eval()
    mix = torch.randn(3, 2, 5000)
    with torch.no_grad():
        assert torch.allclose(model(mix)[:1], model(mix[:1]), atol=1e-5)


def test_gradient_reaches_every_parameter(tiny):
    name, model = tiny
    model.train()
    mix = torch.randn(2, 2, 8192)
    stems = torch.randn(2, len(SOURCES), 2, 8192)
    model.zero_grad()
    SeparationLoss(SOURCES)(model(mix), stems).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"{name}: no gradient for {missing}"


def test_custom_sources_from_config():
    model = compose_model("simple_demucs", TINY["simple_demucs"], sources=["vocals", "accomp"])
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3000)).shape == (1, 2, 2, 3000)


def test_simple_demucs_default_size():
    model = compose_model("simple_demucs")
    assert sum(p.numel() for p in model.parameters()) == 2_694_824
    assert model.encoder[-1][0].out_channels == 128


@pytest.mark.parametrize("length", [1, 7, 595, 596, 597])
def test_simple_demucs_tiny_lengths(length):
    model = SimpleDemucs(SOURCES, channels=4, lstm_hidden=8).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, length))
    assert out.shape == (1, 4, 2, length) and out.isfinite().all()


def test_simple_demucs_is_scale_equivariant():
    """Normalising by the mixture's std and undoing it: model(a x) = a model(x)."""
    model = SimpleDemucs(SOURCES, channels=4, lstm_hidden=8).eval()
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        assert torch.allclose(model(0.01 * mix), 0.01 * model(mix), atol=1e-5)
        assert model(torch.zeros(1, 2, 4000)).abs().max() < 1e-3

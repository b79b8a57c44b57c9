"""SeparationLoss against hand computations (mss/losses.py)."""

import auraloss
import pytest
import torch
import torch.nn.functional as F

from mss.losses import SeparationLoss

SOURCES = ["drums", "bass", "other", "vocals"]


def _pair(seed=0, shape=(2, 4, 2, 4096)):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape, generator=gen)
    est = ref + 0.3 * torch.randn(shape, generator=gen)
    return est, ref


def test_zero_for_identical_inputs():
    _, ref = _pair()
    loss = SeparationLoss(SOURCES)
    assert loss(ref, ref).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(loss.per_source(ref, ref), torch.zeros(4), atol=1e-6)


def test_l1_part_equals_torch_l1_with_unit_weights():
    est, ref = _pair()
    loss = SeparationLoss(SOURCES, l1_weight=0.85, stft_weight=0.0, source_weights={})
    expected = 0.85 * F.l1_loss(est, ref)
    assert torch.allclose(loss(est, ref), expected, rtol=1e-6)


def test_source_weights_by_name_normalised_and_not():
    est, ref = _pair()
    # "guitar" is not a source: ignored; "other"/"vocals" not given: weight 1.
    weights = {"drums": 1.2, "bass": 1.2, "guitar": 5.0}
    per_l1 = torch.stack([F.l1_loss(est[:, s], ref[:, s]) for s in range(4)])
    w = torch.tensor([1.2, 1.2, 1.0, 1.0])

    loss = SeparationLoss(SOURCES, l1_weight=1.0, stft_weight=0.0, source_weights=weights)
    assert torch.allclose(loss.per_source(est, ref), per_l1, rtol=1e-6)
    assert torch.allclose(loss(est, ref), (w * per_l1).sum() / w.sum(), rtol=1e-6)

    raw = SeparationLoss(
        SOURCES, l1_weight=1.0, stft_weight=0.0, source_weights=weights, normalize_weights=False
    )
    assert torch.allclose(raw(est, ref), (w * per_l1).sum(), rtol=1e-6)


def test_stft_part_equals_auraloss_on_channels_folded_into_batch():
    est, ref = _pair(shape=(2, 2, 2, 4096))
    loss = SeparationLoss(["vocals", "accompaniment"], l1_weight=0.0, stft_weight=1.0)
    mrstft = auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=[512, 1024, 2048], hop_sizes=[128, 256, 512], win_lengths=[512, 1024, 2048]
    )
    for s in range(2):
        folded = mrstft(est[:, s].reshape(4, 1, -1), ref[:, s].reshape(4, 1, -1))
        assert torch.allclose(loss.per_source(est, ref)[s], folded, rtol=1e-5)


def test_default_mix_of_terms():
    est, ref = _pair()
    loss = SeparationLoss(SOURCES)
    l1 = SeparationLoss(SOURCES, l1_weight=1.0, stft_weight=0.0).per_source(est, ref)
    st = SeparationLoss(SOURCES, l1_weight=0.0, stft_weight=1.0).per_source(est, ref)
    assert torch.allclose(loss.per_source(est, ref), 0.85 * l1 + 0.15 * st, rtol=1e-5)
    w = torch.tensor([1.2, 1.2, 1.0, 1.0])
    assert torch.allclose(loss(est, ref), (w * (0.85 * l1 + 0.15 * st)).sum() / w.sum(), rtol=1e-5)


def test_silent_source_drops_its_stft_term_only():
    est, ref = _pair()
    ref[:, 3] = 0.0
    est = 0.1 * est
    loss = SeparationLoss(SOURCES)
    per = loss.per_source(est, ref)
    l1 = SeparationLoss(SOURCES, l1_weight=0.85, stft_weight=0.0).per_source(est, ref)
    assert torch.allclose(per[3], l1[3])
    assert (per[:3] > l1[:3]).all()
    assert per.isfinite().all()


def test_gradient_flows_and_is_finite():
    est, ref = _pair()
    ref[:, 1] = 0.0
    est.requires_grad_(True)
    SeparationLoss(SOURCES)(est, ref).backward()
    assert est.grad is not None and est.grad.isfinite().all()
    assert (est.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_bad_inputs():
    est, ref = _pair()
    loss = SeparationLoss(SOURCES)
    with pytest.raises(ValueError, match="shapes differ"):
        loss(est, ref[..., :-1])
    with pytest.raises(ValueError, match="4 sources"):
        loss(est[:, :3], ref[:, :3])
    with pytest.raises(ValueError, match="at least 1025 frames"):
        loss(est[..., :1000], ref[..., :1000])
    with pytest.raises(ValueError, match="same length"):
        SeparationLoss(SOURCES, hop_sizes=[128])


@pytest.mark.parametrize("name", ["l1_mrstft", "l1"])
def test_loss_configs_instantiate(name):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(overrides=[f"+loss={name}", f"+data.sources=[{','.join(SOURCES)}]"])
    loss = instantiate(cfg.loss)
    est, ref = _pair()
    if name == "l1":  # waveform L1 only, drums and bass weighted 1.2, normalised
        weights = torch.tensor([1.2, 1.2, 1.0, 1.0])
        per_source = (est - ref).abs().mean(dim=(0, 2, 3))
        expected = (weights * per_source).sum() / weights.sum()
        assert torch.allclose(loss(est, ref), expected, rtol=1e-6)
    else:
        assert loss.l1_weight == 0.85 and loss.stft_weight == 0.15

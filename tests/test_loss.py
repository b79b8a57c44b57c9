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


@pytest.mark.parametrize("name", ["l1_auraloss", "l1_mrstft", "l1_mrstft_sampled", "l1"])
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
    elif name == "l1_auraloss":  # the seed report's recipe
        assert (loss.l1_weight, loss.stft_weight, loss.stft_form) == (0.85, 0.15, "auraloss")
    else:
        assert (loss.l1_weight, loss.stft_weight, loss.stft_form) == (1.0, 1.0, "complex")
        assert [r[0] for r in loss.resolutions] == [512, 1024, 2048]
        assert [r[1] for r in loss.resolutions] == [128, 256, 512]
        per_step = 1 if name == "l1_mrstft_sampled" else None
        assert loss.resolutions_per_step == per_step
        assert len(loss.step_resolutions()) == (per_step or 3)


def complex_mrstft_reference(est, ref, sizes=(512, 1024, 2048)):
    """mean over resolutions of mean|STFT(est_s - ref_s)|, one source and channel at a time."""
    out = []
    for s in range(est.shape[1]):
        per_size = []
        for n in sizes:
            mags = [
                torch.stft(est[b, s, c] - ref[b, s, c], n, n // 4, window=torch.hann_window(n),
                           normalized=True, return_complex=True).abs()
                for b in range(est.shape[0])
                for c in range(est.shape[2])
            ]  # fmt: skip
            per_size.append(torch.stack(mags).mean())
        out.append(torch.stack(per_size).mean())
    return torch.stack(out)


def test_complex_stft_term_is_the_error_spectrogram():
    est, ref = _pair()
    loss = SeparationLoss(SOURCES, l1_weight=0.0, stft_weight=1.0, stft_form="complex")
    torch.testing.assert_close(loss.per_source(est, ref), complex_mrstft_reference(est, ref))
    terms = loss.components(est, ref)
    weights = torch.tensor([1.2, 1.2, 1.0, 1.0])
    expected = (weights * complex_mrstft_reference(est, ref)).sum() / weights.sum()
    torch.testing.assert_close(terms["stft"], expected)
    torch.testing.assert_close(terms["loss"], loss(est, ref))


def test_complex_form_is_linear_in_the_signal_and_sees_phase():
    est, ref = _pair()
    complex_form = SeparationLoss(SOURCES, 1.0, 1.0, stft_form="complex")
    for k in (0.01, 3.0):  # both terms scale with the signal: neither dominates at any level
        scaled = complex_form.components(k * est, k * ref)
        plain = complex_form.components(est, ref)
        for name in ("l1", "stft"):
            torch.testing.assert_close(scaled[name], k * plain[name], rtol=1e-5, atol=0)
    assert complex_form(ref, ref) == 0
    # a sign flip keeps every magnitude: auraloss's STFT term cannot see it, this one can
    spectral = SeparationLoss(SOURCES, 0.0, 1.0, stft_form="complex")
    magnitude = SeparationLoss(SOURCES, 0.0, 1.0, stft_form="auraloss")
    assert magnitude(-ref, ref) < 1e-3 * spectral(-ref, ref)
    flipped, silent = float(spectral(-ref, ref)), float(spectral(torch.zeros_like(ref), ref))
    assert flipped == pytest.approx(2 * silent, rel=1e-5)


def test_components_add_up_and_train_under_autocast():
    est, ref = _pair()
    est.requires_grad_(True)
    loss = SeparationLoss(SOURCES, 0.7, 0.3, stft_form="complex")
    terms = loss.components(est, ref)
    torch.testing.assert_close(terms["loss"], 0.7 * terms["l1"] + 0.3 * terms["stft"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(est.bfloat16(), ref.bfloat16())
    assert low.dtype == torch.float32
    low.backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    assert set(SeparationLoss(SOURCES, 1.0, 0.0).components(est, ref)) == {"l1", "loss"}
    with pytest.raises(ValueError, match="stft_form"):
        SeparationLoss(SOURCES, stft_form="phase")


def _torch_stft_magnitude_sum(x, n_fft, hop, window):
    spec = torch.stft(
        x, n_fft, hop, win_length=window.shape[-1], window=window, center=True,
        normalized=True, return_complex=True,
    )  # fmt: skip
    return spec.abs().sum(dim=(-2, -1))


@pytest.mark.parametrize(
    "n_fft, hop, win_length, length",
    [(512, 128, 512, 5000), (64, 16, 64, 1000), (64, 24, 48, 777), (63, 16, 63, 500),
     (256, 64, 200, 129), (2048, 512, 2048, 1025)],
)  # fmt: skip
def test_stft_magnitude_sum_and_its_backward_equal_torch_autograd(n_fft, hop, win_length, length):
    """The hand-written adjoint (irfft of S/|S|, window, overlap-add) is torch's gradient, in
    float64 to rounding: hop dividing n_fft or not, a shorter window, odd n_fft, a signal
    barely longer than half a frame."""
    from mss.stft_magnitude import stft_magnitude_sum

    x = torch.randn(3, length, dtype=torch.float64, requires_grad=True)
    window = torch.hann_window(win_length, dtype=torch.float64)
    weights = torch.randn(3, dtype=torch.float64)
    expected = _torch_stft_magnitude_sum(x, n_fft, hop, window)
    (expected_grad,) = torch.autograd.grad(expected, x, weights)
    got = stft_magnitude_sum(x, n_fft, hop, window)
    (grad,) = torch.autograd.grad(got, x, weights)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12 * expected_grad.abs().max())


def test_stft_magnitude_sum_gradient_at_a_zero_bin_is_zero_and_backward_runs_once():
    from mss.stft_magnitude import stft_magnitude_sum

    # silence: every bin is 0, torch's abs gives gradient 0 there, and so must the adjoint
    x = torch.zeros(2, 300, dtype=torch.float64, requires_grad=True)
    window = torch.hann_window(64, dtype=torch.float64)
    total = stft_magnitude_sum(x, 64, 16, window).sum()
    total.backward(retain_graph=True)
    assert torch.equal(x.grad, torch.zeros_like(x))
    with pytest.raises(RuntimeError, match="run it once"):
        total.backward()


def test_sampled_resolutions_average_to_the_full_term_and_validate_on_all():
    est, ref = _pair()
    full = SeparationLoss(SOURCES, 0.0, 1.0, stft_form="complex")
    sampled = SeparationLoss(SOURCES, 0.0, 1.0, stft_form="complex", resolutions_per_step=1)
    single = {
        n: complex_mrstft_reference(est, ref, sizes=(n,)) for n in (512, 1024, 2048)
    }  # each step's term is one resolution's, exactly
    for _ in range(12):
        value = sampled.per_source(est, ref)
        matches = [n for n, term in single.items() if torch.allclose(value, term, rtol=1e-5)]
        assert len(matches) == 1
    # every resolution is drawn about equally often (within 5 sigma of 600 / 3), so the mean
    # of the draws is the full term
    drawn = [sampled.step_resolutions()[0][0] for _ in range(600)]
    assert {n: drawn.count(n) for n in single} == pytest.approx({n: 200 for n in single}, abs=58)
    sampled.eval()  # validation: every resolution, the full term
    torch.testing.assert_close(sampled.per_source(est, ref), full.per_source(est, ref))
    # the draws have a generator of their own: the same sequence for the same seed, and the
    # global generator (the data's random chunks) untouched
    torch.manual_seed(5)
    state = torch.get_rng_state()
    again = SeparationLoss(SOURCES, 0.0, 1.0, stft_form="complex", resolutions_per_step=2)
    other = SeparationLoss(SOURCES, 0.0, 1.0, stft_form="complex", resolutions_per_step=2)
    assert [again.step_resolutions() for _ in range(5)] == [
        other.step_resolutions() for _ in range(5)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(len(again.step_resolutions()) == 2 for _ in range(5))
    with pytest.raises(ValueError, match="resolutions_per_step must be in 1..3"):
        SeparationLoss(SOURCES, stft_form="complex", resolutions_per_step=4)
    with pytest.raises(ValueError, match="needs stft_form='complex'"):
        SeparationLoss(SOURCES, stft_form="auraloss", resolutions_per_step=1)

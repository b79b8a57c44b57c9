"""Mixed precision: float32 islands under autocast, models within a stated tolerance of
float32, and `trainer.precision=bf16-mixed` training on CPU whose checkpoints reload."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from mss.checkpoint import load_checkpoint, load_separator
from mss.losses import SeparationLoss
from mss.models._stft import istft, stft
from mss.models._wiener import wiener
from mss.module import SeparationModule
from tests.test_models import _UNET_TINY, CASES, SOURCES, compose_model
from tests.test_train import compose_train, tiny_overrides
from tests.test_zoo import build as build_zoo
from train import train

# Relative L2 error ||bf16 - fp32|| / ||fp32|| of a forward under bf16 autocast. Measured:
# 0.10-0.30 % for the tiny models below, 0.2-0.7 % for the tiny zoo models, 0.09-0.49 % for
# the default configs with random weights, 0.7 % for simple_demucs trained on the toy set
# separating benchmark music (about 43 dB SNR); bf16 keeps 8 significant bits.
TOLERANCE = 0.01

# Training runs; validation (full-track separation under autocast, BSSEval) once, the other
# two skip it and save last.ckpt at the end of the epoch.
NO_VALIDATION = [
    "callbacks=last_checkpoint",
    "+trainer.limit_val_batches=0",
    "module/scheduler=none",  # the plateau scheduler watches val/loss
]
MODELS = {
    "simple_demucs": ["model=simple_demucs", *CASES["simple_demucs"][1]],
    "unet": ["model=unet", *_UNET_TINY, *NO_VALIDATION],
    "hdemucs": ["model=hdemucs_low", *CASES["hdemucs_low"][1], *NO_VALIDATION],
}


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _mix(batch=2, length=11025, seed=0):
    return 0.1 * torch.randn(batch, 2, length, generator=torch.Generator().manual_seed(seed))


def _relative_error(estimate, reference):
    return ((estimate.float() - reference).norm() / reference.norm()).item()


def test_stft_istft_and_wiener_are_float32_under_bf16_autocast():
    x = _mix(length=8000)
    generator = torch.Generator().manual_seed(1)
    z = stft(x, 512, 128)
    magnitudes = torch.rand(2, len(SOURCES), *z.shape[1:], generator=generator)
    expected = (z, istft(z, 512, 128, 8000), wiener(magnitudes, z, iterations=2))
    half_input = stft(x.bfloat16().float(), 512, 128)
    with bf16():
        got = (stft(x, 512, 128), istft(z, 512, 128, 8000), wiener(magnitudes, z, iterations=2))
        got_half_input = stft(x.bfloat16(), 512, 128)
        got_half_magnitudes = wiener(magnitudes.bfloat16(), z, iterations=2)
    for value, reference in zip(got, expected, strict=True):
        assert value.dtype == reference.dtype and value.dtype in (torch.complex64, torch.float32)
        assert torch.equal(value, reference)
    assert got_half_input.dtype == torch.complex64 and torch.equal(got_half_input, half_input)
    assert torch.equal(got_half_magnitudes, wiener(magnitudes.bfloat16().float(), z, iterations=2))


def test_hdemucs_spectrogram_is_float32_under_bf16_autocast(monkeypatch):
    """torchaudio's HDemucs computes its own STFT; it stays float32 because its input is the
    float32 mix and its decoder output is de-normalised by float32 statistics before the
    iSTFT. This checks that it holds."""
    seen = []

    def recording(fn):
        def wrapper(x, *args, **kwargs):
            seen.append((fn.__name__, x.dtype))
            return fn(x, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "stft", recording(torch.stft))
    monkeypatch.setattr(torch, "istft", recording(torch.istft))
    model = compose_model("hdemucs_low", CASES["hdemucs_low"][1]).eval()
    with torch.no_grad(), bf16():
        model(_mix())
    assert set(seen) == {("stft", torch.float32), ("istft", torch.complex64)}


@pytest.mark.parametrize("form", ["complex", "auraloss"])
def test_loss_is_float32_under_bf16_autocast(form):
    reference = 0.1 * torch.randn(2, len(SOURCES), 2, 4096)
    estimate = (reference + 0.05 * torch.randn_like(reference)).bfloat16()
    loss = SeparationLoss(SOURCES, stft_form=form)
    with bf16():
        value = loss(estimate, reference)
    assert value.dtype == torch.float32
    assert torch.equal(value, loss(estimate.float(), reference))


@pytest.mark.parametrize("case", ["simple_demucs", "unet", "unet_per_target_wiener", "hdemucs_low"])
def test_forward_under_bf16_autocast_matches_float32(case):
    name, overrides = CASES[case]
    torch.manual_seed(0)
    model = compose_model(name, overrides).eval()
    mix = _mix()
    with torch.no_grad():
        reference = model(mix)
        with bf16():
            estimate = model(mix)
    assert estimate.dtype == torch.float32
    error = _relative_error(estimate, reference)
    # above float32 rounding: bf16 really ran
    assert 1e-4 < error < TOLERANCE


@pytest.mark.parametrize("case", ["openunmix", "htdemucs_small", "bs_roformer_small"])
def test_zoo_models_run_under_bf16_autocast(case):
    model = build_zoo(case)
    mix = _mix(length=4410)
    model.train()
    with bf16():
        estimate = model(mix)
    loss = SeparationLoss(SOURCES, stft_weight=0)(estimate, torch.zeros_like(estimate))
    loss.backward()
    assert loss.isfinite()
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        reference = model(mix)
        with bf16():
            estimate = model(mix)
    assert _relative_error(estimate, reference) < TOLERANCE


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bf16_mixed_training_on_cpu(model, tiny_musdb_root, tiny_validation_tracks, tmp_path,
                                    monkeypatch):  # fmt: skip
    """A few Lightning steps with `trainer.precision=bf16-mixed`: autocast was on in the
    training step, the loss is finite, and the checkpoint rebuilds a float32 separator."""
    autocast = []
    training_step = SeparationModule.training_step

    def recording_step(self, batch, batch_idx):
        autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(SeparationModule, "training_step", recording_step)
    base = tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
    cfg = compose_train(
        [o for o in base if not o.startswith("model.")]
        + MODELS[model]
        + ["trainer.precision=bf16-mixed", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"]
    )
    metrics = train(cfg)
    assert autocast == [(True, torch.bfloat16)] * 2
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))

    last = tmp_path / "checkpoints" / "last.ckpt"
    separator = load_separator(last)
    state = load_checkpoint(last)["state_dict"]
    for name, tensor in separator.state_dict().items():
        assert torch.equal(tensor, state[f"net.{name}"])
    assert all(p.dtype == torch.float32 for p in separator.parameters())
    with torch.no_grad():
        stems = separator(_mix(batch=1, length=4410))
    assert stems.shape == (1, 4, 2, 4410) and stems.isfinite().all()


def test_16_mixed_composes_and_is_bf16_on_cpu(tmp_path):
    """fp16 AMP is GPU-only: on CPU, Lightning (2.6) runs `16-mixed` as `bf16-mixed` and
    says so."""
    cfg = compose_train([f"paths.output_dir={tmp_path}", "trainer.precision=16-mixed"])
    assert cfg.trainer.precision == "16-mixed"
    with pytest.warns(Warning, match="fp16 is not supported on CPU"):
        trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False)
    assert trainer.precision == "bf16-mixed"

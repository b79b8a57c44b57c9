"""The field's peers from their own packages: Open-Unmix, HT Demucs and BS-RoFormer wrappers.

Each wrapper must be the package's model: same weights, same input, same output (the tests
named ``*_equals_*``), and keep mss's contract around it (shapes for any length, gradients,
checkpoints, chunked inference, a real training run).
"""

from __future__ import annotations

import inspect

import bs_roformer
import openunmix
import pytest
import torch
from demucs.apply import apply_model
from demucs.htdemucs import HTDemucs as PackageHTDemucs
from hydra.utils import instantiate
from omegaconf import OmegaConf
from openunmix import model as umx

from mss.apply import separate
from mss.checkpoint import load_separator
from mss.losses import SeparationLoss
from mss.models._contract import check_separator
from mss.models.bs_roformer import BSRoformer
from mss.models.htdemucs import HTDemucs
from mss.models.openunmix import OpenUnmix
from tests.model_configs import CONF, SOURCES, model_config, model_target
from train import train

RATE = 44100
SEGMENT = 0.25  # data.segment of the tiny HT Demucs: its eval length is 11025 samples

# case -> (config name, overrides that make it tiny enough for CPU tests)
CASES = {
    "openunmix": ("openunmix", ["model.hidden_size=16", "model.nb_layers=2"]),
    "htdemucs_small": ("htdemucs_small", []),
    "bs_roformer_small": ("bs_roformer_small", []),
}
# The package-default configs: composed and checked against the packages' defaults below.
DEFAULTS = ("openunmix", "htdemucs", "bs_roformer")
ZOO_TARGETS = ("mss.models.openunmix.", "mss.models.htdemucs.", "mss.models.bs_roformer.")


def compose_cfg(name, overrides=(), sources=SOURCES):
    return model_config(name, overrides, sources, RATE, SEGMENT)


def build(case, sources=SOURCES):
    torch.manual_seed(0)
    name, overrides = CASES[case]
    return instantiate(compose_cfg(name, overrides, sources))


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request):
    return request.param, build(request.param)


def _mix(batch, length, seed=0):
    return 0.1 * torch.randn(batch, 2, length, generator=torch.Generator().manual_seed(seed))


# --- configs ---------------------------------------------------------------------------------


def test_every_zoo_config_is_covered():
    """Every conf/model/*.yaml that builds a zoo wrapper is tested in this file."""
    found = set()
    for path in CONF.glob("model/*.yaml"):
        if model_target(path.stem).startswith(ZOO_TARGETS):
            found.add(path.stem)
    covered = {name for name, _ in CASES.values()} | set(DEFAULTS)
    assert found == covered, f"untested: {sorted(found - covered)}, gone: {sorted(covered - found)}"


def test_configs_read_the_data_group():
    for name in {*DEFAULTS, *(n for n, _ in CASES.values())}:
        cfg = compose_cfg(name, sources=["vocals", "accompaniment"])
        assert cfg.sources == ["vocals", "accompaniment"] and cfg.sample_rate == RATE
    assert compose_cfg("htdemucs").segment == SEGMENT


def test_htdemucs_inference_segment_can_follow_the_training_segment(tmp_path):
    """The documented override: chunked inference on exactly the model's segment."""
    from tests.test_train import compose_train

    cfg = compose_train(
        ["model=htdemucs", "inference.segment=${data.segment}", f"paths.output_dir={tmp_path}"]
    )
    assert cfg.module.valid_segment == cfg.model.segment == cfg.data.segment


def _signature_defaults(fn):
    return {
        k: v.default
        for k, v in inspect.signature(fn).parameters.items()
        if v.default is not inspect.Parameter.empty
    }


def test_htdemucs_config_is_the_packages_default_architecture():
    package = _signature_defaults(PackageHTDemucs.__init__)
    ours = compose_cfg("htdemucs")
    for key in ("channels", "depth", "t_layers", "nfft"):
        assert ours[key] == package[key], key
    # the wrapper's own defaults are the package's too (what **kwargs leaves to it)
    wrapper = _signature_defaults(HTDemucs.__init__)
    assert {k: wrapper[k] for k in ("channels", "depth", "t_layers", "nfft")} == {
        k: package[k] for k in ("channels", "depth", "t_layers", "nfft")
    }
    small = compose_cfg("htdemucs_small")
    assert small.channels < ours.channels and small.t_layers < ours.t_layers


def test_bs_roformer_config_is_the_packages_example_with_its_defaults():
    package = _signature_defaults(bs_roformer.BSRoformer.__init__)
    ours = compose_cfg("bs_roformer")
    # required by the package (no default): its README's example, as in the paper
    assert (ours.dim, ours.depth) == (512, 12)
    assert (ours.time_transformer_depth, ours.freq_transformer_depth) == (1, 1)
    assert (ours.heads, ours.dim_head) == (package["heads"], package["dim_head"])
    extra = set(ours) - {"_target_", "sources", "sample_rate", "audio_channels"}
    assert extra == {
        "dim",
        "depth",
        "time_transformer_depth",
        "freq_transformer_depth",
        "heads",
        "dim_head",
    }  # everything else is left to the package's defaults


def test_openunmix_default_is_the_packages_umxhq():
    """The default config builds umxhq's separator: same parameters, same output."""
    sources = ["vocals", "accompaniment"]
    torch.manual_seed(0)
    ours = instantiate(compose_cfg("openunmix", sources=sources)).eval()
    package = openunmix.umxhq(targets=sources, pretrained=False).eval()
    theirs = package.state_dict()
    assert {k: v.shape for k, v in ours.model.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    assert ours.model.target_models["vocals"].nb_bins == 1487  # 16 kHz of 2049 bins
    assert (ours.model.niter, ours.model.wiener_win_len) == (package.niter, 300)
    package.load_state_dict(ours.model.state_dict())
    mix = _mix(1, 8000)
    with torch.no_grad():
        assert torch.equal(ours(mix), package(mix))


# --- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 1000, 44100 + 37])
def test_contract_shapes_for_odd_lengths(tiny, length):
    _, model = tiny
    model.eval()
    with torch.no_grad():
        out = model(_mix(2, length))
    assert out.shape == (2, len(SOURCES), 2, length)
    assert out.isfinite().all()
    contract = check_separator(model, SOURCES, RATE, 2)
    assert contract.trainable and not contract.whole_track and not contract.pretrained


def test_training_mode_keeps_the_contract(tiny):
    _, model = tiny
    model.train()
    out = model(_mix(2, 7001))
    assert out.shape == (2, len(SOURCES), 2, 7001) and out.isfinite().all()


def test_bad_input_raises_value_error(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="Expected 3D tensor"):
        model(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 3, 1000))


def test_batch_items_are_independent(tiny):
    _, model = tiny
    model.eval()
    mix = _mix(2, 9000)
    with torch.no_grad():
        torch.testing.assert_close(model(mix)[1:], model(mix[1:]), atol=1e-5, rtol=1e-4)


def test_custom_sources(tiny):
    name, _ = tiny
    model = build(name, sources=["vocals", "accompaniment"]).eval()
    with torch.no_grad():
        assert model(_mix(1, 3000)).shape == (1, 2, 2, 3000)
    assert model.sources == ["vocals", "accompaniment"]


def test_a_training_step_reaches_every_parameter(tiny):
    name, model = tiny
    model.train()
    model.zero_grad()
    stems = 0.05 * torch.randn(2, len(SOURCES), 2, 11025)
    loss = SeparationLoss(SOURCES, l1_weight=1.0, stft_weight=0.0)(model(_mix(2, 11025)), stems)
    loss.backward()
    assert loss.isfinite()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"{name}: non-finite gradient in {bad}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


def test_checkpoint_rebuilds_the_same_separator(tiny, tmp_path):
    """A checkpoint in train.py's layout (resolved net_config + net.* weights) rebuilds it."""
    name, model = tiny
    cfg = compose_cfg(*CASES[name])
    with torch.no_grad():  # weights that differ from a fresh init
        for p in model.parameters():
            if p.requires_grad:  # (not the STFT windows and rotary frequencies)
                p.add_(0.01 * torch.randn_like(p))
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    ckpt = tmp_path / "net.ckpt"
    net_config = OmegaConf.to_yaml(cfg, resolve=True)
    torch.save({"state_dict": state, "hyper_parameters": {"net_config": net_config}}, ckpt)
    rebuilt = load_separator(ckpt)
    assert type(rebuilt) is type(model) and not rebuilt.training
    mix = _mix(1, 20000)
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(mix), model(mix))


def test_chunked_separation_of_a_longer_track(tiny):
    """mss.apply cuts a 2.3 s track into 1 s segments; one segment covering it is one call."""
    _, model = tiny
    model.eval()
    mix = _mix(1, int(2.3 * RATE))
    out = separate(model, mix, segment=1.0, overlap=0.25, sample_rate=RATE)
    assert out.shape == (1, len(SOURCES), 2, mix.shape[-1]) and out.isfinite().all()
    assert out.abs().amax(dim=(0, 2, 3)).min() > 0  # every stem got an estimate
    with torch.no_grad():
        whole = model(mix)
    torch.testing.assert_close(separate(model, mix, 3.0, 0.25, RATE), whole)


# --- agreement with the packages -------------------------------------------------------------


def _umx_separator(model: OpenUnmix, niter: int) -> umx.Separator:
    inner = model.model
    reference = umx.Separator(
        {
            name: umx.OpenUnmix(
                nb_bins=t.nb_output_bins,
                nb_channels=2,
                hidden_size=t.hidden_size,
                nb_layers=t.lstm.num_layers,
                max_bin=t.nb_bins,
            )
            for name, t in inner.target_models.items()
        },
        niter=niter,
        n_fft=inner.stft.n_fft,
        n_hop=inner.stft.n_hop,
        nb_channels=2,
        wiener_win_len=inner.wiener_win_len,
    )
    reference.load_state_dict(inner.state_dict())
    return reference


def test_openunmix_equals_the_packages_separator():
    """Eval: openunmix's Separator with niter=1 (its Wiener filter); training: niter=0."""
    model = build("openunmix")
    mix = _mix(2, 30001)
    filtered = _umx_separator(model, niter=1).eval()
    plain = _umx_separator(model, niter=0).eval()
    model.eval()
    with torch.no_grad():
        ours = model(mix)
        assert torch.equal(ours, filtered(mix))
        assert not torch.allclose(ours, plain(mix), atol=1e-4)  # the filter did something

    model.train()
    plain.train()
    torch.manual_seed(1)  # the same LSTM dropout masks in both
    ours = model(mix)
    torch.manual_seed(1)
    assert torch.equal(ours, plain(mix))


def test_openunmix_single_source_needs_niter_zero():
    with pytest.raises(ValueError, match="niter=0"):
        OpenUnmix(["vocals"], n_fft=512, n_hop=128, hidden_size=8)
    model = OpenUnmix(["vocals"], n_fft=512, n_hop=128, hidden_size=8, niter=0).eval()
    with torch.no_grad():
        assert model(_mix(1, 3000)).shape == (1, 1, 2, 3000)


def _htdemucs_reference(model: HTDemucs) -> PackageHTDemucs:
    inner = model.model
    reference = PackageHTDemucs(
        sources=SOURCES,
        channels=inner.channels,
        depth=inner.depth,
        nfft=inner.nfft,
        t_layers=len(inner.crosstransformer.layers),
        samplerate=RATE,
        segment=SEGMENT,
    )
    reference.load_state_dict(inner.state_dict())
    return reference


@pytest.mark.parametrize("length", [1000, 11025, 40000])
def test_htdemucs_equals_the_package_in_eval(length):
    """Up to the segment: the package's model (its own padding); longer: its apply_model."""
    model = build("htdemucs_small").eval()
    reference = _htdemucs_reference(model).eval()
    mix = _mix(2, length)
    with torch.no_grad():
        ours = model(mix)
        if length <= model.segment_length:
            theirs = reference(mix)
        else:
            theirs = apply_model(reference, mix, shifts=0, split=True, overlap=0.25)
    assert model.segment_length == 11025
    assert torch.equal(ours, theirs)


def test_htdemucs_equals_the_package_in_training_and_keeps_its_segment():
    model = build("htdemucs_small").train()
    reference = _htdemucs_reference(model).train()
    mix = _mix(2, 7001)
    assert torch.equal(model(mix), reference(mix))
    # the package records the batch's length; the wrapper keeps the configured segment, so a
    # model rebuilt from its checkpoint runs on the same length as the trained one
    assert reference.segment * RATE == 7001
    assert model.model.segment * RATE == model.segment_length == 11025


@pytest.mark.parametrize("length", [512 * 40, 512 * 40 + 77])
@pytest.mark.parametrize("sources", [SOURCES, ["vocals"]])
def test_bs_roformer_equals_the_package(length, sources):
    """On a multiple of the hop the package's output unchanged; otherwise the package's output
    on the input padded with zeros to the next multiple, cut to the input's length."""
    model = build("bs_roformer_small", sources=sources).eval()
    inner = model.model
    assert (inner.num_stems, inner.stereo) == (len(sources), True)
    mix = _mix(2, length)
    padded = torch.nn.functional.pad(mix, (0, -length % 512))
    with torch.no_grad():
        ours = model(mix)
        theirs = inner(padded)
        raw = inner(mix)
    if len(sources) == 1:
        assert theirs.shape == (2, 2, padded.shape[-1])  # the package drops a single stem axis
        theirs = theirs[:, None]
    else:
        assert theirs.shape == (2, len(sources), 2, padded.shape[-1])
    assert torch.equal(ours, theirs[..., :length])
    # what the padding is for: the package alone loses the samples past the last full hop
    assert raw.shape[-1] == 512 * (length // 512)


def test_bs_roformer_mono():
    model = BSRoformer(
        ["vocals", "accompaniment"],
        audio_channels=1,
        dim=8,
        depth=1,
        heads=1,
        dim_head=8,
        num_residual_streams=1,
    ).eval()
    assert model.model.stereo is False
    with torch.no_grad():
        assert model(torch.randn(1, 1, 5000)).shape == (1, 2, 1, 5000)
    with pytest.raises(ValueError, match="1 or 2 audio channels"):
        BSRoformer(["vocals"], audio_channels=3, dim=8, depth=1)


# --- the whole training path -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_train_fast_dev_run(case, tiny_musdb_root, tiny_validation_tracks, tmp_path):
    from tests.test_train import compose_train, tiny_overrides

    name, overrides = CASES[case]
    base = [
        o
        for o in tiny_overrides(tiny_musdb_root, tiny_validation_tracks, tmp_path)
        if not o.startswith("model.")
    ]  # simple Demucs's size keys
    cfg = compose_train([*base, f"model={name}", *overrides, "debug=fdr"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    for source in SOURCES:
        assert f"val/usdr_{source}" in metrics

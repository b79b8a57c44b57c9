"""DSP baselines (mss/models/dsp): separator contract, identities, configs, eval path."""

from __future__ import annotations

import contextlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from mss.errors import ConfigError
from mss.models.dsp._base import STEMS
from mss.models.dsp.hpss_nmf import HPSSNMF, hoyer_sparsity, nmf, power_masks
from mss.models.dsp.hpss_repet import HPSSRepet
from tests.test_models import compose_model

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SOURCES = ["drums", "bass", "other", "vocals"]
RATE = 44100
MODELS = {"hpss_repet": HPSSRepet, "hpss_nmf": HPSSNMF}
# Small STFTs and a short REPET width keep every test at a fraction of a second of audio.
FAST = {
    "hpss_repet": ["model.n_fft=1024", "model.hop_length=256", "model.repet_width=0.1"],
    "hpss_nmf": ["model.n_fft=1024", "model.hop_length=256", "model.nmf_max_iter=20"],
}


@contextlib.contextmanager
def raises_value_error(match: str):
    """A ValueError matching ``match``, raised directly or by a constructor Hydra called."""
    with pytest.raises((ValueError, InstantiationException)) as info:
        yield
    error = info.value
    if isinstance(error, InstantiationException):
        error = error.__cause__
    assert isinstance(error, ValueError), repr(error)
    assert re.search(match, str(error)), f"{match!r} not in {error}"


def music(seconds: float = 1.0, channels: int = 2, seed: int = 0, rate: int = RATE):
    """Toy stereo music [C, T]: a repeating bass+kick pattern, noise hats, a gliding melody.

    The pattern is panned slightly differently in each channel, and a little noise makes
    every frame different (no exact ties in similarity).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    beat = 0.25
    phase = np.mod(t, beat)
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-phase * 30)
    bass = 0.5 * np.sin(2 * np.pi * 55 * (1 + (np.mod(t, 4 * beat) > 2 * beat)) * t)
    hats = 0.2 * rng.standard_normal(t.size) * np.exp(-np.mod(t, beat / 2) * 200)
    melody = 0.4 * np.sin(2 * np.pi * np.cumsum(440 + 120 * np.sin(1.3 * t)) / rate)
    noise = 1e-3 * rng.standard_normal((channels, t.size))
    pattern = kick + bass + hats
    pans = np.linspace(0.8, 1.2, channels)[:, None]
    return (pans * pattern + melody + noise).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return request.param, compose_model(request.param, FAST[request.param])


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("length", [1, 7, 1000, RATE // 2 + 37])
def test_contract_shapes_for_any_length(model, length):
    name, net = model
    mix = torch.from_numpy(music(1.0)[:, :length]).repeat(2, 1, 1)  # [2, 2, T]
    out = net(mix)
    assert out.shape == (2, 4, 2, length)
    assert out.dtype == mix.dtype and torch.isfinite(out).all()


def test_no_parameters_and_not_trainable(model):
    _, net = model
    assert net.trainable is False
    assert list(net.parameters()) == [] and list(net.buffers()) == []
    assert net.sources == SOURCES and net.sample_rate == RATE and net.audio_channels == 2


def test_float64_in_float64_out(model):
    _, net = model
    mix = torch.from_numpy(music(0.3)).double()[None]
    out = net(mix)
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), net(mix.float()), atol=1e-4)


def test_batch_items_are_independent(model):
    _, net = model
    a, b = torch.from_numpy(music(0.4, seed=1)), torch.from_numpy(music(0.4, seed=2))
    both = net(torch.stack([a, b]))
    assert torch.allclose(both[1], net(b[None])[0], atol=1e-6)


@pytest.mark.parametrize(
    "mix, message",
    [
        (torch.zeros(2, 100), "Expected 3D tensor"),
        (torch.zeros(1, 1, 2, 100), "Expected 3D tensor"),
        (torch.zeros(1, 1, 100), "Expected 2 audio channels"),
        (torch.zeros(1, 2, 0), "at least one frame"),
        (torch.zeros(1, 2, 100, dtype=torch.int16), "floating-point"),
        (torch.full((1, 2, 100), float("nan")), "finite"),
    ],
)
def test_bad_input_raises_value_error(model, mix, message):
    _, net = model
    with pytest.raises(ValueError, match=message):
        net(mix)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "sources", [["drums", "bass", "other"], ["vocals", "accompaniment"], [*SOURCES, "piano"]]
)
def test_sources_must_be_the_four_stems(name, sources):
    with raises_value_error("sources must list exactly"):
        compose_model(name, FAST[name], sources=sources)


def test_output_follows_the_configured_source_order(model):
    name, net = model
    permuted = compose_model(name, FAST[name], sources=["vocals", "other", "drums", "bass"])
    mix = torch.from_numpy(music(0.5))[None]
    ours, theirs = net(mix), permuted(mix)
    for i, source in enumerate(permuted.sources):
        assert torch.equal(theirs[:, i], ours[:, SOURCES.index(source)])


# ----------------------------------------------------------------------------- identities


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_hpss_repet_stems_sum_to_the_mixture(dtype, atol):
    net = compose_model("hpss_repet", [*FAST["hpss_repet"], "model.hpss_margin=[1.5,2.0]"])
    mix = torch.from_numpy(music(1.0, seed=3)).to(dtype)[None]
    stems = net(mix)
    assert torch.allclose(stems.sum(1), mix, atol=atol, rtol=0)
    # and the stems are not trivial: each carries some of the signal
    assert (stems.square().mean((0, 2, 3)) > 1e-8).all()


def test_hpss_nmf_stems_sum_to_the_mixture():
    """Its masks sum to one in every bin, so only the iSTFT's rounding is left."""
    net = compose_model("hpss_nmf", FAST["hpss_nmf"])
    mix = torch.from_numpy(music(1.0, seed=4))[None]
    assert torch.allclose(net(mix).sum(1), mix, atol=1e-5, rtol=0)


def test_outputs_keep_the_mixture_level():
    """No peak normalisation: scaling the mixture scales every stem by the same factor."""
    for name in MODELS:
        net = compose_model(name, FAST[name])
        mix = torch.from_numpy(music(0.5, seed=5)).double()[None]
        assert torch.allclose(net(0.01 * mix), 0.01 * net(mix), atol=1e-9), name


def test_shared_masks_couple_the_channels_and_per_channel_do_not():
    shared = compose_model("hpss_repet", FAST["hpss_repet"])
    per_channel = compose_model(
        "hpss_repet", [*FAST["hpss_repet"], "model.channel_masks=per_channel"]
    )
    mix = torch.from_numpy(music(1.0, seed=6))[None]
    other_right = mix.clone()
    other_right[:, 1] = torch.from_numpy(music(1.0, seed=7)[1])
    # per channel: the left outputs ignore the right input
    assert torch.allclose(
        per_channel(mix)[..., 0, :], per_channel(other_right)[..., 0, :], atol=1e-6
    )
    # shared: the right channel changes the masks, so the left outputs change too
    assert not torch.allclose(shared(mix)[..., 0, :], shared(other_right)[..., 0, :], atol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_equals_per_channel_for_identical_channels(name):
    """With L == R the mean magnitude is each channel's magnitude: both modes agree."""
    shared = compose_model(name, FAST[name])
    per_channel = compose_model(name, [*FAST[name], "model.channel_masks=per_channel"])
    mono = torch.from_numpy(music(0.6, channels=1, seed=8)).repeat(2, 1)[None]
    assert torch.allclose(shared(mono), per_channel(mono), atol=1e-5)
    assert torch.equal(shared(mono)[..., 0, :], shared(mono)[..., 1, :])


def test_drums_band_is_attenuated_and_bass_is_low_passed():
    net = compose_model(
        "hpss_repet", [*FAST["hpss_repet"], "model.drums_band_gain=0.0", "model.bass_cutoff=150"]
    )
    mix = torch.from_numpy(music(1.0, seed=9))[None]
    stems = net(mix)[0]
    freqs = np.fft.rfftfreq(mix.shape[-1], 1 / RATE)

    def band_energy(x, low, high):
        # windowed, or the jump between the clip's ends leaks into every band
        spec = np.abs(np.fft.rfft(x.numpy() * np.hanning(x.shape[-1]), axis=-1)) ** 2
        return spec[..., (freqs >= low) & (freqs <= high)].sum()

    drums, bass = stems[SOURCES.index("drums")], stems[SOURCES.index("bass")]
    # zero gain: only STFT leakage at the band edges is left inside it
    assert band_energy(drums, 500, 2500) < 1e-3 * band_energy(mix[0], 500, 2500)
    # fourth-order Butterworth applied twice: -96 dB per octave above the cutoff
    assert band_energy(bass, 1200, RATE / 2) < 1e-6 * band_energy(bass, 0, 150)


def test_bass_cutoff_is_checked_against_nyquist():
    with raises_value_error("Nyquist"):
        compose_model("hpss_repet", ["model.bass_cutoff=4000"], sample_rate=8000)
    with raises_value_error("Nyquist"):
        compose_model("hpss_repet", ["model.bass_cutoff=0"])
    compose_model("hpss_repet", ["model.bass_cutoff=3999"], sample_rate=8000)  # fine
    with raises_value_error("Nyquist"):
        compose_model("hpss_nmf", ["model.high_band_min=5000"], sample_rate=8000)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("hpss_repet", ["model.drums_band=[3000,300]"], "drums_band"),
        ("hpss_repet", ["model.drums_band_gain=1.5"], "drums_band_gain"),
        ("hpss_repet", ["model.bass_order=0"], "bass_order"),
        ("hpss_repet", ["model.repet_width=0"], "repet_width"),
        ("hpss_repet", ["model.repet_k=0"], "repet_k"),
        ("hpss_repet", ["model.repet_neighbors=closest"], "repet_neighbors"),
        ("hpss_repet", ["model.repet_margin=0"], "repet_margin"),
        ("hpss_repet", ["model.hpss_margin=0.5"], "hpss_margin"),
        ("hpss_repet", ["model.hpss_kernel_size=[31,0]"], "hpss_kernel_size"),
        ("hpss_repet", ["model.hpss_power=0"], "hpss_power"),
        ("hpss_repet", ["model.channel_masks=mid"], "channel_masks"),
        ("hpss_repet", ["model.hop_length=2048"], "hop_length"),
        ("hpss_repet", ["model.audio_channels=0"], "audio_channels"),
        ("hpss_nmf", ["model.low_band_max=5000"], "low_band_max"),
        ("hpss_nmf", ["model.n_components=[4,4]"], "n_components"),
        ("hpss_nmf", ["model.nmf_beta_loss=itakura-saito"], "nmf_beta_loss"),
        ("hpss_nmf", ["model.nmf_max_iter=0"], "nmf_max_iter"),
        ("hpss_nmf", ["model.vocals_components=13"], "vocals_components"),
        ("hpss_nmf", ["model.mask_power=0"], "mask_power"),
    ],
)
def test_bad_settings_raise_value_error(name, overrides, message):
    with raises_value_error(message):
        compose_model(name, overrides)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_exposes_every_constructor_argument(name):
    keys = set(yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())) - {"_target_"}
    assert keys == set(inspect.signature(MODELS[name]).parameters)
    net = compose_model(name)
    assert type(net) is MODELS[name]
    assert net.sources == SOURCES and net.sample_rate == RATE


# Every option set away from its default, and the attribute it lands in.
OPTIONS = {
    "hpss_repet": [
        ("channel_masks=per_channel", "channel_masks", "per_channel"),
        ("hpss_kernel_size=[17,9]", "hpss_kernel_size", (17, 9)),
        ("hpss_margin=[1.0,3.0]", "hpss_margin", (1.0, 3.0)),
        ("hpss_power=1.0", "hpss_power", 1.0),
        ("drums_band=[200,4000]", "drums_band", (200.0, 4000.0)),
        ("drums_band_gain=0.5", "drums_band_gain", 0.5),
        ("bass_cutoff=120", "bass_cutoff", 120.0),
        ("bass_order=2", "bass_order", 2),
        ("repet_k=6", "repet_k", 6),
        ("repet_neighbors=nearest", "repet_neighbors", "nearest"),
        ("repet_margin=2.0", "repet_margin", 2.0),
        ("repet_power=1.0", "repet_power", 1.0),
    ],
    "hpss_nmf": [
        ("channel_masks=per_channel", "channel_masks", "per_channel"),
        ("hpss_kernel_size=17", "hpss_kernel_size", 17),
        ("hpss_margin=2.0", "hpss_margin", 2.0),
        ("hpss_power=1.0", "hpss_power", 1.0),
        ("low_band_max=150", "low_band_max", 150.0),
        ("high_band_min=6000", "high_band_min", 6000.0),
        ("n_components=[2,9,2]", "n_components", (2, 9, 2)),
        ("nmf_beta_loss=frobenius", "nmf_beta_loss", "frobenius"),
        ("seed=3", "seed", 3),
        ("vocals_components=2", "vocals_components", 2),
        ("mask_power=1.0", "mask_power", 1.0),
    ],
}
OPTION_CASES = [(name, *option) for name, options in OPTIONS.items() for option in options]


@pytest.mark.parametrize("name, override, attribute, value", OPTION_CASES)
def test_every_option_reaches_the_model_and_changes_its_output(name, override, attribute, value):
    base = compose_model(name, FAST[name])
    changed = compose_model(name, [*FAST[name], f"model.{override}"])
    assert getattr(changed, attribute) == value
    mix = torch.from_numpy(music(1.0, seed=10))[None]
    out = changed(mix)
    assert out.shape == (1, 4, 2, mix.shape[-1]) and torch.isfinite(out).all()
    assert not torch.allclose(out, base(mix), atol=1e-6), f"{override} changed nothing"


def test_stft_and_io_options_reach_the_model():
    for name in MODELS:
        net = compose_model(
            name, ["model.n_fft=512", "model.hop_length=128", "model.audio_channels=1"]
        )
        assert (net.n_fft, net.hop_length, net.audio_channels) == (512, 128, 1)
        mono = torch.from_numpy(music(0.3, channels=1))[None]
        assert net(mono).shape == (1, 4, 1, mono.shape[-1])
    assert compose_model("hpss_repet", ["model.repet_width=3.5"]).repet_width == 3.5
    assert compose_model("hpss_nmf", ["model.nmf_max_iter=7"]).nmf_max_iter == 7


# ----------------------------------------------------------------------------- NMF parts


def test_nmf_reduces_the_divergence_and_is_reproducible():
    rng = np.random.default_rng(0)
    V = torch.from_numpy(rng.random((30, 5)) @ rng.random((5, 40)))
    for loss in ("kullback-leibler", "frobenius"):
        W, H = nmf(V, 5, 200, loss, seed=1)
        assert (W >= 0).all() and (H >= 0).all()
        assert torch.linalg.norm(V - W @ H) < 0.05 * torch.linalg.norm(V)
        W2, H2 = nmf(V, 5, 200, loss, seed=1)
        assert torch.equal(W, W2) and torch.equal(H, H2)


def test_hoyer_sparsity():
    x = np.array([[0.0, 1.0, 0.3, 0.0], [0.0, 1.0, 0.3, 0.0], [5.0, 1.0, 0.3, 0.0]])
    np.testing.assert_allclose(hoyer_sparsity(x, axis=0), [1.0, 0.0, 0.0, 0.0], atol=1e-12)
    assert 0 < hoyer_sparsity(np.array([[1.0], [0.2], [0.0]]))[0] < 1


def test_hpss_nmf_vocals_are_never_empty_by_default():
    net = compose_model("hpss_nmf", FAST["hpss_nmf"])
    stems = net(torch.from_numpy(music(1.0, seed=11))[None])[0]
    assert stems[SOURCES.index("vocals")].abs().max() > 1e-3


def test_power_masks_sum_to_one_and_send_empty_bins_to_the_fallback():
    models = np.random.default_rng(0).random((1, 4, 3, 5))
    models[:, :, 0, 0] = 0
    masks = power_masks(models, 2.0, fallback=STEMS.index("other"))
    assert np.allclose(masks.sum(1), 1)
    assert masks[0, STEMS.index("other"), 0, 0] == 1
    big = power_masks(models * 1e30, 50.0, fallback=2)  # no overflow at large powers
    assert np.isfinite(big).all() and np.allclose(big.sum(1), 1)


# ----------------------------------------------------------------------------- whole path


def _eval_config(root, out, name, tracks):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="eval",
            overrides=[
                "data=musdb18hq",
                f"data.root={root}",
                "data.validation_tracks=[toy-train-00]",
                f"output_dir={out}",
                "device=cpu",
                f"model={name}",
                "metrics=fast",
                "segment=null",
                f"tracks=[{','.join(tracks)}]",
            ],
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_runs_the_dsp_model_without_checkpoint(tiny_musdb_root, tmp_path, name):
    from mss.evaluate import evaluate_from_config

    summary = evaluate_from_config(
        _eval_config(tiny_musdb_root, tmp_path / name, name, ["toy-test-00"])
    )
    assert summary.tracks == ["toy-test-00"]
    assert (tmp_path / name / "tracks" / "toy-test-00.json").is_file()
    sdr = summary.sisec18.loc[SOURCES, "SDR"]
    assert np.isfinite(sdr.to_numpy(dtype=float)).all()


def test_train_refuses_a_dsp_model():
    from train import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=hpss_repet"])
    with pytest.raises(ConfigError, match="nothing to train"):
        train(cfg)

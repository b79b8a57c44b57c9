"""The fast BSSEval v4 (mss/metrics/bsseval.py) against museval on the same inputs.

Signals are music-like (harmonic notes with envelopes, stereo panning, a little noise) at
8 kHz with 1 s frames (win = hop = 8000), so museval stays quick; the 512-tap filters, the
images-mode projection and the framing are the same as at 44.1 kHz. Targets (issue 4): SDR
within 1e-4 dB and ISR/SIR/SAR within 0.01 dB on every finite frame, the same NaN frames.
"""

from __future__ import annotations

import museval
import numpy as np
import pytest
import soundfile as sf
import torch

from mss.data.toy import PARTS, make_toy_dataset
from mss.metrics import _bsseval_toeplitz as toeplitz
from mss.metrics.bsseval import bss_eval_track
from mss.metrics.protocol import METRICS
from mss.models.dsp.hpss_repet import HPSSRepet
from tests import bsseval_reference

RATE = 8000
TOL = {"SDR": 1e-4, "ISR": 1e-2, "SIR": 1e-2, "SAR": 1e-2}


def music(n_src: int, seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    """Music-like references `[S, T, C]`: notes of decaying harmonics, panned, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    out = np.zeros((n_src, len(t), channels))
    for j in range(n_src):
        for _ in range(3 + 2 * int(seconds)):
            f0 = 55 * 2 ** (rng.integers(0, 40) / 12)
            onset, decay = rng.uniform(0, seconds), rng.uniform(0.1, 0.8)
            envelope = np.where(t >= onset, np.exp(-np.clip(t - onset, 0, None) / decay), 0)
            partials = sum(
                0.6**h * np.sin(2 * np.pi * f0 * (h + 1) * t + rng.uniform(0, 2 * np.pi))
                for h in range(6)
                if f0 * (h + 1) < RATE / 2
            )
            out[j] += (envelope * partials)[:, None] * rng.uniform(0.2, 1.0, channels)
        out[j] += 0.01 * rng.standard_normal((len(t), channels))
    return out


def separate(references: np.ndarray, seed: int = 1, leak: float = 0.2) -> np.ndarray:
    """Estimates `[S, T, C]`: each reference plus leakage from the others and noise."""
    rng = np.random.default_rng(seed)
    total = references.sum(0)
    estimates = np.empty_like(references)
    for j, ref in enumerate(references):
        estimates[j] = ref + leak * rng.uniform(0.3, 1.0) * (total - ref)
    return estimates + 0.02 * rng.standard_normal(references.shape)


def museval_scores(references, estimates, win=RATE, hop=RATE) -> dict[str, np.ndarray]:
    sdr, isr, sir, sar = museval.evaluate(references, estimates, win=win, hop=hop)
    return {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}


def fast_scores(references, estimates, win=RATE, hop=RATE, **kwargs) -> dict[str, np.ndarray]:
    names = [f"s{j}" for j in range(len(references))]
    scores = bss_eval_track(references, estimates, names, win, hop, **kwargs)
    return {m: np.stack([scores[n][m] for n in names]) for m in scores[names[0]]}


def assert_agree(fast: dict, reference: dict, metrics=METRICS, tol: float | None = None) -> None:
    """Same NaN and infinite frames, finite ones within `TOL` (or `tol` dB for every metric)."""
    for metric in metrics:
        got, want = fast[metric], reference[metric]
        assert got.shape == want.shape, metric
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=metric)
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=metric)
        atol = TOL[metric] if tol is None else tol
        np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=atol, err_msg=metric)


@pytest.fixture(scope="module")
def stems() -> tuple[np.ndarray, np.ndarray]:
    """Four stereo sources, 5.5 s: five whole frames and a partial one museval drops."""
    references = music(4, 5.5)
    return references, separate(references)


def test_four_stereo_sources_agree_with_museval(stems):
    references, estimates = stems
    fast = fast_scores(references, estimates)
    assert fast["SDR"].shape == (4, 5)
    assert_agree(fast, museval_scores(references, estimates))


def test_sdr_only_is_the_full_sdr_and_the_framewise_snr(stems):
    references, estimates = stems
    sdr = fast_scores(references, estimates, sdr_only=True)
    assert set(sdr) == {"SDR"}
    np.testing.assert_array_equal(sdr["SDR"], fast_scores(references, estimates)["SDR"])
    # Images-mode SDR is the plain SNR over each frame and both channels.
    frames = references[:, : 5 * RATE].reshape(4, 5, -1)
    errors = estimates[:, : 5 * RATE].reshape(4, 5, -1) - frames
    snr = 10 * np.log10((frames**2).sum(-1) / (errors**2).sum(-1))
    np.testing.assert_allclose(sdr["SDR"], snr, rtol=0, atol=1e-9)


@pytest.mark.parametrize("channels, n_src", [(1, 3), (2, 2)])
def test_mono_and_two_custom_sources(channels, n_src):
    references = music(n_src, 3.0, channels=channels, seed=channels)
    estimates = separate(references, seed=n_src)
    names = ["lead", "backing", "keys"][:n_src]
    scores = bss_eval_track(references, estimates, names, RATE, RATE)
    assert list(scores) == names
    fast = {m: np.stack([scores[n][m] for n in names]) for m in METRICS}
    assert_agree(fast, museval_scores(references, estimates))


def test_silent_frames_are_nan_for_every_source_as_in_museval():
    references = music(2, 4.0, seed=3)
    estimates = separate(references, seed=4)
    references[0, RATE : 2 * RATE] = 0  # a silent reference frame
    estimates[1, 2 * RATE : 3 * RATE] = 0  # a silent estimate frame
    # museval's test is on the sum over channels: opposite channels count as silent too.
    references[1, 3 * RATE : 4 * RATE, 1] = -references[1, 3 * RATE : 4 * RATE, 0]
    fast = fast_scores(references, estimates)
    assert np.isnan(fast["SDR"][:, 1:]).all() and np.isfinite(fast["SDR"][:, 0]).all()
    assert_agree(fast, museval_scores(references, estimates))


@pytest.mark.parametrize("which", ["references", "estimates"])
def test_source_silent_over_the_track_is_nan_with_a_warning(which):
    references = music(3, 3.0, seed=5)
    estimates = separate(references, seed=6)
    {"references": references, "estimates": estimates}[which][1] = 0
    with pytest.warns(UserWarning, match=r"track 'Song A'.*source 's1' is silent"):
        fast = fast_scores(references, estimates, track_name="Song A")
    for metric in METRICS:
        assert np.isnan(fast[metric][1]).all()
    # The others are scored as museval scores the remaining sources (museval would raise).
    keep = [0, 2]
    rest = museval_scores(references[keep], estimates[keep])
    assert_agree({m: v[keep] for m, v in fast.items()}, rest)


def test_every_source_silent_gives_nan_without_error():
    references = np.zeros((2, 2 * RATE, 2))
    with pytest.warns(UserWarning):
        fast = fast_scores(references, references)
    assert all(np.isnan(v).all() for v in fast.values())


@pytest.mark.parametrize("delta", [-1500, 700])
def test_estimates_shorter_or_longer_are_padded_or_cut(delta):
    references = music(2, 3.5, seed=7)
    estimates = separate(references, seed=8)
    if delta < 0:
        estimates = estimates[:, :delta]
    else:
        estimates = np.concatenate([estimates, np.ones((2, delta, 2))], 1)
    assert_agree(fast_scores(references, estimates), museval_scores(references, estimates))


@pytest.mark.parametrize(
    "win, hop",
    [(RATE, RATE // 2), (RATE // 2, RATE), (400, 400), (10 * RATE, 10 * RATE)],
    ids=["overlapping", "gaps", "short-frames", "one-frame"],
)
def test_other_framings_agree_with_museval(win, hop):
    references = music(2, 2.5, seed=9)
    estimates = separate(references, seed=10)
    fast = fast_scores(references, estimates, win=win, hop=hop)
    assert_agree(fast, museval_scores(references, estimates, win=win, hop=hop))


def test_float32_and_torch_inputs_give_the_float64_result():
    references = music(2, 2.0, seed=11).astype(np.float32)
    estimates = separate(references, seed=12).astype(np.float32)
    expected = fast_scores(references.astype(np.float64), estimates.astype(np.float64))
    for refs, ests in [
        (references, estimates),
        (torch.from_numpy(references), torch.from_numpy(estimates)),
    ]:
        got = fast_scores(refs, ests)
        for metric in METRICS:
            np.testing.assert_allclose(got[metric], expected[metric], rtol=0, atol=1e-9)


def test_near_perfect_estimates_stay_finite_and_close():
    references = music(2, 2.0, seed=13)
    estimates = references + 1e-4 * np.random.default_rng(14).standard_normal(references.shape)
    fast = fast_scores(references, estimates)
    assert_agree(fast, museval_scores(references, estimates))


def test_mixture_as_estimate_agrees_except_the_rounding_noise_sar():
    references = music(2, 2.0, seed=18)
    estimates = np.broadcast_to(references.sum(0) / 2, references.shape)
    fast = fast_scores(references, estimates)
    reference = museval_scores(references, estimates)
    assert_agree(fast, reference, metrics=("SDR", "ISR", "SIR"))
    # The estimate is exactly in the span of the references: no artifact is left but rounding,
    # which museval (about 240 dB) and this module (above 100 dB, or +inf) round differently.
    assert (fast["SAR"] > 100).all() and (reference["SAR"] > 100).all()


def test_block_toeplitz_solver_matches_a_dense_solve():
    rng = np.random.default_rng(15)
    signal = rng.standard_normal((3, 4000))
    n_lags = 64
    blocks = np.stack([signal[:, : 4000 - k] @ signal[:, k:].T for k in range(n_lags)])
    rhs = rng.standard_normal((n_lags, 3, 2))
    dense = toeplitz.dense_block_toeplitz(blocks)
    expected = np.linalg.solve(dense, rhs.reshape(-1, 2)).reshape(rhs.shape)
    np.testing.assert_allclose(toeplitz.solve_block_toeplitz(blocks, rhs)[0], expected, atol=1e-12)
    np.testing.assert_allclose(
        toeplitz.block_toeplitz_matmul(blocks, expected), rhs, rtol=0, atol=1e-9
    )
    # The inverse's first and last block columns give T^{-1} y for any y (Gohberg-Semencul).
    other = rng.standard_normal((n_lags, 3, 5))
    _, first, last = toeplitz.block_levinson(blocks, rhs, inverse=True)
    np.testing.assert_allclose(
        toeplitz.gohberg_semencul(first, last, other),
        np.linalg.solve(dense, other.reshape(-1, 5)).reshape(other.shape),
        atol=1e-12,
    )


def test_singular_gram_falls_back_to_a_dense_solve():
    # Two identical references make G singular: the dense solve regularises it, with a warning.
    # Its filters differ from museval's only by (h, -h) pairs, which map the two identical
    # frames to zero, so ISR and SAR are still museval's.
    references = music(2, 2.0, seed=16)
    references[1] = references[0]
    estimates = separate(references, seed=17)
    with pytest.warns(UserWarning, match="linearly dependent at the 512 filter lags"):
        fast = fast_scores(references, estimates)
    reference = museval_scores(references, estimates)
    assert_agree(fast, reference, metrics=("SDR", "ISR", "SAR"))
    # No interference is left to measure: SIR is rounding noise in both (above 100 dB).
    assert (fast["SIR"] > 100).all() and (reference["SIR"] > 100).all()


# ------------------------------------------------------------ nearly dependent references
# When the references are tonal and their only broadband content is a faint floor (16-bit
# quantisation noise in the toy set, where each stem is a panned mono part, so its two channels
# are equal up to rounding), the Gram matrix of the delayed references has condition numbers of
# 1e11-1e13. The exact least-squares projection (tests/bsseval_reference.py) says which answer
# is right: museval's, there. Without any floor (float64 tones) it is singular to float64
# precision, museval's answer is rounding noise, and the fast backend's is regularised.

EXACT = 1e-4  # dB: a float64 result against the exact one, where float64 determines it


def tones(n_src: int, seconds: float, bits: int | None = None, floor: float = 0.0, seed: int = 0):
    """References `[S, T, 2]`: three steady sines per source, faded in and out, each sine at
    its own level in each channel; quantised to `bits`, or plus white noise at `floor`."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    fade = np.sin(np.linspace(0, np.pi / 2, RATE // 2)) ** 2
    envelope = np.concatenate([fade, np.ones(n - 2 * len(fade)), fade[::-1]])
    out = np.zeros((n_src, n, 2))
    for j in range(n_src):
        for _ in range(3):
            sine = np.sin(2 * np.pi * rng.uniform(100, 1500) * t + rng.uniform(0, 2 * np.pi))
            out[j] += 0.2 * (envelope * sine)[:, None] * rng.uniform(0.2, 1.0, 2)
    out += floor * rng.standard_normal(out.shape)
    if bits:
        out = np.round(out * 2 ** (bits - 1)) / 2 ** (bits - 1)
    return out


@pytest.fixture(scope="module")
def toy_track(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """3 s of a toy-set song: bass and vocals, and the HPSS + REPET-SIM estimates of them."""
    root = make_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=0, n_test=3, seconds=3.0)
    folder = root / "test" / "toy-test-02"
    mixture, rate = sf.read(folder / "mixture.wav", dtype="float32", always_2d=True)
    separator = HPSSRepet(list(PARTS), rate)
    with torch.no_grad():
        estimates = separator(torch.from_numpy(mixture.T.copy())[None])[0]  # [S, C, T]
    keep = ["bass", "vocals"]
    references = np.stack(
        [sf.read(folder / f"{s}.wav", dtype="float32", always_2d=True)[0] for s in keep]
    )
    estimates = estimates[[PARTS.index(s) for s in keep]].transpose(1, 2)
    return references.astype(np.float64), estimates.double().numpy()


def test_toy_track_agrees_with_museval_and_the_exact_projection(toy_track):
    references, estimates = toy_track
    win = 44100
    exact = bsseval_reference.scores(references, estimates, win, win)
    reference = museval_scores(references, estimates, win, win)
    assert_agree(reference, exact, tol=EXACT)  # museval is right here
    fast = fast_scores(references, estimates, win, win)
    assert_agree(fast, exact, tol=EXACT)
    assert_agree(fast, reference)


@pytest.mark.parametrize(
    "kwargs, tol",
    [({"bits": 16}, EXACT), ({"floor": 1e-6}, 1e-3)],
    ids=["16-bit", "noise-floor-1e-6"],
)
def test_nearly_dependent_tones_agree_with_museval_and_the_exact_projection(kwargs, tol):
    # Condition numbers about 1e11 (16-bit) and 1e13 (the floor), where float64 is still
    # right to about 1e-6 and 1e-4 dB.
    references = tones(2, 3.0, **kwargs)
    estimates = separate(references, seed=19)
    exact = bsseval_reference.scores(references, estimates, RATE, RATE)
    reference = museval_scores(references, estimates)
    assert_agree(reference, exact, tol=tol)
    fast = fast_scores(references, estimates)
    assert_agree(fast, exact, tol=tol)
    assert_agree(fast, reference)


def test_references_dependent_to_float64_precision_get_well_defined_filters():
    references = tones(2, 3.0)  # no floor: the Gram matrix is singular to float64 precision
    nudged = references * (1 + 2**-52)  # a change of one unit in the last place
    estimates = separate(references, seed=20)
    # museval's ISR/SIR there are rounding noise: that change moves them by decibels.
    before, after = museval_scores(references, estimates), museval_scores(nudged, estimates)
    assert max(np.max(np.abs(before[m] - after[m])) for m in ("ISR", "SIR")) > 1
    with pytest.warns(UserWarning, match="linearly dependent at the 512 filter lags"):
        fast = fast_scores(references, estimates)
    with pytest.warns(UserWarning, match="linearly dependent at the 512 filter lags"):
        fast_nudged = fast_scores(nudged, estimates)
    assert_agree(fast_nudged, fast, tol=EXACT)
    # What they are: the exact solution of the normal equations with the documented ridge.
    exact = bsseval_reference.scores(references, estimates, RATE, RATE, ridge=toeplitz.RIDGE)
    assert_agree(fast, exact, tol=EXACT)


def test_block_toeplitz_solver_is_accurate_where_levinson_is_not():
    # Stereo tones whose channels are equal up to 16-bit rounding, as a toy-set stem
    # (condition number 7e10).
    signal = np.round(tones(1, 2.0, seed=21)[0, :, :1] * [1.0, 0.7] * 2**15) / 2**15
    n_lags = 512
    blocks = np.stack([signal[: len(signal) - k].T @ signal[k:] for k in range(n_lags)])
    blocks[0] += toeplitz.EPS * np.eye(2)
    rhs = np.random.default_rng(22).standard_normal((n_lags, 2, 2))
    dense = toeplitz.dense_block_toeplitz(blocks)
    exact = bsseval_reference.refined_solve(dense.astype(np.longdouble), rhs.reshape(-1, 2))
    exact = exact.astype(np.float64).reshape(rhs.shape)

    def error(x: np.ndarray) -> float:
        return float(np.linalg.norm(x - exact) / np.linalg.norm(exact))

    assert error(toeplitz.block_levinson(blocks, rhs)) > 0.1  # why the solution is checked
    x, regularised = toeplitz.solve_block_toeplitz(blocks, rhs)
    lu = np.linalg.solve(dense, rhs.reshape(-1, 2)).reshape(rhs.shape)  # museval's way
    assert error(x) <= max(error(lu), 1e-6) and not regularised


@pytest.mark.parametrize(
    "refs, ests, names, match",
    [
        (np.zeros((2, 10)), np.zeros((2, 10)), ["a", "b"], "Expected references"),
        (np.ones((2, 10, 2)), np.ones((3, 10, 2)), ["a", "b"], "differ"),
        (np.ones((2, 10, 2)), np.ones((2, 10, 2)), ["a"], "source names"),
        (np.ones((2, 0, 2)), np.ones((2, 0, 2)), ["a", "b"], "empty"),
    ],
)
def test_bad_input_raises(refs, ests, names, match):
    with pytest.raises(ValueError, match=match):
        bss_eval_track(refs, ests, names, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(stems):
    references, estimates = stems
    cpu = fast_scores(references, estimates)
    gpu = fast_scores(references, estimates, device="cuda")
    for metric in METRICS:
        np.testing.assert_allclose(gpu[metric], cpu[metric], rtol=0, atol=1e-6)

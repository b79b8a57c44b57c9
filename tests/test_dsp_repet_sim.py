"""Fast REPET-SIM (mss/models/dsp/repet_sim.py) against librosa's recipe and brute force."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from mss.models.dsp import repet_sim
from mss.models.dsp.repet_sim import (
    default_k,
    nn_median_filter,
    repet_sim_masks,
    select_neighbors,
    softmask,
)

RATE = 22050


def spectrogram(seconds: float = 8.0, seed: int = 0) -> np.ndarray:
    """|STFT| [F, t] of a repeating accompaniment with a non-repeating melody on top.

    A little noise keeps every pair of frames distinct, so neighbour ranks have no ties.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    bar = 1.0
    chord = sum(np.sin(2 * np.pi * f * t) for f in (110, 165, 220)) * (np.mod(t, bar) < 0.6)
    hats = rng.standard_normal(t.size) * np.exp(-np.mod(t, bar / 4) * 80)
    melody = np.sin(2 * np.pi * np.cumsum(500 + 200 * np.sin(0.7 * t)) / RATE) * (np.mod(t, 3) < 2)
    y = (0.3 * chord + 0.2 * hats + 0.3 * melody + 1e-3 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    return np.abs(librosa.stft(y, n_fft=1024, hop_length=512))


def recipe(S: np.ndarray, width: int):
    """librosa's "Vocal separation" gallery example."""
    S_filter = librosa.decompose.nn_filter(S, aggregate=np.median, metric="cosine", width=width)
    S_filter = np.minimum(S, S_filter)
    mask_i = librosa.util.softmask(S_filter, 2 * (S - S_filter), power=2)
    mask_v = librosa.util.softmask(S - S_filter, 10 * S_filter, power=2)
    return S_filter, mask_i, mask_v


@pytest.fixture(scope="module")
def spec():
    return spectrogram()


@pytest.mark.parametrize("width", [5, 20])
def test_neighbours_equal_librosas_recurrence_matrix(spec, width):
    """Same neighbour set per frame as librosa.segment.recurrence_matrix (used by nn_filter)."""
    rec = librosa.segment.recurrence_matrix(spec, metric="cosine", width=width, sparse=True)
    rec = rec.T.tocsr()  # librosa returns it transposed: row i of rec.T = neighbours of i
    nbr, counts = select_neighbors(spec, width)
    assert nbr.shape[1] == default_k(spec.shape[1], width)
    for i in range(spec.shape[1]):
        assert np.array_equal(nbr[i, : counts[i]], np.sort(rec[i].indices)), f"frame {i}"


@pytest.mark.parametrize("width", [5, 20])
def test_filter_and_masks_agree_with_the_librosa_recipe(spec, width):
    ref_filter, ref_bg, ref_fg = recipe(spec, width)
    ours = nn_median_filter(spec, width)
    # the median is an exact selection: bit-identical where the neighbours are the same
    np.testing.assert_array_equal(np.minimum(spec, ours), ref_filter)
    background, foreground = repet_sim_masks(spec, width)
    np.testing.assert_allclose(background, ref_bg, atol=1e-6)
    np.testing.assert_allclose(foreground, ref_fg, atol=1e-6)


def test_explicit_k_agrees_with_librosa(spec):
    width, k = 10, 7  # odd k: the median is one value
    ref = librosa.decompose.nn_filter(spec, aggregate=np.median, metric="cosine", width=width, k=k)
    np.testing.assert_array_equal(nn_median_filter(spec, width, k=k), ref)


def test_nearest_mode_takes_the_k_most_similar_far_frames(spec):
    width, k = 8, 9
    nbr, counts = select_neighbors(spec, width, k=k, neighbors="nearest")
    unit = spec / np.linalg.norm(spec, axis=0, keepdims=True)
    sim = unit.T.astype(np.float64) @ unit.astype(np.float64)
    frames = np.arange(spec.shape[1])
    for i in frames:
        far = np.abs(frames - i) >= width
        expected = np.sort(frames[far][np.argsort(-sim[i, far], kind="stable")[:k]])
        assert counts[i] == k
        assert np.array_equal(nbr[i], expected), f"frame {i}"
    out = nn_median_filter(spec, width, k=k, neighbors="nearest")
    np.testing.assert_array_equal(out, np.stack([np.median(spec[:, r], axis=1) for r in nbr], 1))


@pytest.mark.parametrize("rank_dtype", [np.uint16, np.uint32])
def test_rank_median_kernel_equals_np_median(rank_dtype):
    """Odd and even neighbour counts, counts below k, and both rank widths."""
    rng = np.random.default_rng(1)
    F, t, kmax = 13, 50, 9
    S = rng.random((F, t)).astype(np.float32)
    counts = rng.integers(1, kmax + 1, t)
    nbr = np.zeros((t, kmax), dtype=np.int64)
    for i, n in enumerate(counts):
        nbr[i, :n] = np.sort(rng.choice(t, n, replace=False))
    order = np.argsort(S, axis=1)
    ranks = np.empty((F, t), dtype=rank_dtype)
    np.put_along_axis(ranks, order, np.arange(t, dtype=rank_dtype)[None], axis=1)
    upper = np.zeros((t, F), dtype=rank_dtype)
    lower = np.zeros((t, F), dtype=rank_dtype)
    nbits = int(t - 1).bit_length()
    repet_sim._median_ranks(np.ascontiguousarray(ranks.T), nbr, counts, nbits, upper, lower)
    sorted_vals = np.take_along_axis(S, order, axis=1)
    got = (
        np.take_along_axis(sorted_vals, lower.T, 1) + np.take_along_axis(sorted_vals, upper.T, 1)
    ) / 2
    for i, n in enumerate(counts):
        np.testing.assert_array_equal(got[:, i], np.median(S[:, nbr[i, :n]], axis=1))


def test_short_inputs_and_silence():
    rng = np.random.default_rng(2)
    S = rng.random((6, 5)).astype(np.float32)
    # no frame has a neighbour 10 frames away: unchanged, like librosa's empty rows
    np.testing.assert_array_equal(nn_median_filter(S, width=10), S)
    np.testing.assert_array_equal(nn_median_filter(S[:, :1], width=1), S[:, :1])
    # frames 0 and 4 are 4 apart: each is the other's only neighbour at width 4
    out = nn_median_filter(S, width=4)
    np.testing.assert_array_equal(out[:, [0, 4]], S[:, [4, 0]])
    np.testing.assert_array_equal(out[:, 1:4], S[:, 1:4])
    silent = np.zeros((6, 40), dtype=np.float32)
    assert not nn_median_filter(silent, width=3).any()
    background, foreground = repet_sim_masks(silent, width=3)
    assert not background.any() and not foreground.any()


def test_input_is_not_modified():
    S = np.asfortranarray(spectrogram(2.0))  # S.T of a Fortran array is a view
    before = S.copy()
    nn_median_filter(S, width=4)
    np.testing.assert_array_equal(S, before)


def test_bad_arguments():
    S = np.ones((4, 20), dtype=np.float32)
    with pytest.raises(ValueError, match="2D"):
        nn_median_filter(np.ones((2, 4, 20)), width=2)
    with pytest.raises(ValueError, match="width"):
        nn_median_filter(S, width=0)
    with pytest.raises(ValueError, match="k must be"):
        nn_median_filter(S, width=2, k=0)
    with pytest.raises(ValueError, match="neighbors"):
        nn_median_filter(S, width=2, neighbors="closest")


def test_softmask_equals_librosa():
    rng = np.random.default_rng(3)
    X, R = rng.random((2, 5, 7)).astype(np.float32) ** 3
    X[0, 0] = R[0, 0] = 0
    for power in (1.0, 2.0, 50.0):
        np.testing.assert_allclose(
            softmask(X, R, power), librosa.util.softmask(X, R, power=power), atol=1e-7
        )

"""The realistic embedding generator: its fit recovers a structure the test makes itself, and its
pieces (completions, bands, ranks) agree with hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dcssa.benchmarks.embeddings import (
    BANDS,
    EmbeddingFit,
    band_of,
    completions_of,
    fit,
    fit_check,
    spectrum,
    target_ranks,
)

D = 12
TRUE_SPECTRUM = np.array([0.30, 0.20, 0.14, 0.10, 0.08, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01, 0.005])
SCALES = np.array([0.10, 0.15, 0.20, 0.25])
SHRINK = np.array([0.4, 0.6, 0.8, 0.9])
OFFSET_SCALE = np.array([0.5, 0.35, 0.2, 0.1])


@pytest.fixture(scope="module")
def made():
    """Photos around 4 far-apart centres with a known residual spectrum; queries q = a p + m + r per band."""
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(D, D)))
    centres = 3.0 * np.eye(D)[:4]
    weights = np.array([0.1, 0.2, 0.3, 0.4])
    k = rng.choice(4, size=6000, p=weights)
    z = rng.standard_normal((6000, D)) * np.sqrt(TRUE_SPECTRUM)
    photos = centres[k] + SCALES[k, None] * (z @ basis.T)
    completions = rng.choice([0.2, 0.4, 0.7, 1.0], size=3000)  # one per band
    targets = rng.integers(6000, size=3000)
    b = band_of(completions)
    gap = np.full(D, 0.05)
    r = rng.standard_normal((3000, D)) / np.sqrt(D)
    queries = SHRINK[b, None] * photos[targets] + gap + OFFSET_SCALE[b, None] * r
    return {"photos": photos, "k": k, "weights": weights, "centres": centres, "basis": basis, "queries": queries,
            "targets": targets, "completions": completions}


def test_fit_recovers_clusters_spectrum_and_offsets(made):
    m = fit(made["photos"], made["queries"], made["targets"], made["completions"], clusters=4, calibrate=False)
    order = [int(np.argmin(np.linalg.norm(m.centres - c, axis=1))) for c in made["centres"]]
    assert sorted(order) == [0, 1, 2, 3]  # one fitted centre per true one
    assert np.allclose(m.centres[order], made["centres"], atol=0.02)
    assert np.allclose(m.weights[order], made["weights"], atol=0.02)
    assert np.allclose(m.cluster_scale[order], SCALES, rtol=0.05)
    assert np.allclose(m.resid_eigvals, TRUE_SPECTRUM, atol=0.01)
    assert abs(m.resid_eigvecs[:, 0] @ made["basis"][:, 0]) > 0.98  # the leading direction too
    assert np.allclose(m.band_shrink, SHRINK, atol=0.03)
    assert np.allclose(m.band_scale, OFFSET_SCALE, rtol=0.05)
    assert np.allclose(m.band_mean, 0.05, atol=0.02)
    assert np.allclose(m.offset_eigvals, 1 / D, atol=0.02)  # isotropic offsets: a flat spectrum


def test_saved_fit_generates_what_it_was_fitted_on(made, tmp_path):
    """Photos drawn from a saved fit have the fitted spectrum (after the unit normalisation both share)."""
    real = made["photos"] / np.linalg.norm(made["photos"], axis=1, keepdims=True)
    m = fit(real, made["queries"], made["targets"], made["completions"], clusters=4, source={"name": "made"})
    loaded = EmbeddingFit.load(m.save(tmp_path / "fit.npz"))
    assert loaded.source["name"] == "made" and loaded.dim == D
    gen = loaded.photos(6000, seed=1, chunk=1000)
    assert gen.dtype == np.float32 and np.allclose(np.linalg.norm(gen, axis=1), 1, atol=1e-5)
    assert np.abs(spectrum(gen) - spectrum(real)).sum() < 0.08
    # chunk i depends on (seed, i) only: a smaller catalogue is a prefix of a bigger one
    assert np.array_equal(gen[:2000], loaded.photos(2000, seed=1, chunk=1000))
    assert not np.array_equal(gen[:1000], gen[1000:2000])


def test_fit_check_compares_like_with_like(made):
    real = made["photos"][:1500] / np.linalg.norm(made["photos"][:1500], axis=1, keepdims=True)
    t = made["targets"][:600] % 1500
    q = made["queries"][:600]
    m = fit(real, q, t, made["completions"][:600], clusters=4)
    chk = fit_check(m, real, q, t, made["completions"][:600])
    assert chk["ks_nn_distance"] < 0.2 and chk["spectrum_l1"] < 0.15
    assert len(chk["by_completion"]) == len(BANDS) - 1
    assert chk["real"]["target_in_top10"] == pytest.approx(np.mean(target_ranks(real, q, t) <= 10), abs=1e-4)


def test_completions_bands_and_ranks_by_hand():
    assert completions_of(["a", "a", "a", "a", "b", "c", "c"]).tolist() == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 1.0]
    assert band_of(np.array([0.1, 0.25, 0.26, 0.5, 0.75, 0.8, 1.0])).tolist() == [0, 0, 1, 1, 2, 3, 3]
    photos = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    queries = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    # q0: target 2 scores 0 below 1 and 0.8 -> rank 3; q1: target 2 is best -> 1; q2: target 0 (0.6) < 0.96, 0.8 -> 3
    assert target_ranks(photos, queries, np.array([2, 2, 0])).tolist() == [3, 1, 3]


def test_offset_calibration_leaves_a_faithful_model_alone_and_corrects_a_wrong_one(made):
    """Queries that follow the fitted model need no correction (multipliers near 1); queries whose
    offsets are twice what the fit says (the regression sees one scale, ranking another) get ~2."""
    real = made["photos"][:1500] / np.linalg.norm(made["photos"][:1500], axis=1, keepdims=True)
    t = made["targets"][:800] % 1500
    c = made["completions"][:800]
    rng = np.random.default_rng(5)
    m = fit(real, real[t] * 0.9 + 0.02 * rng.standard_normal((800, D)), t, c, clusters=4)
    assert np.allclose(m.source["offset_scale_calibration"], 1.0, atol=0.25)
    from dcssa.benchmarks.embeddings import calibrate_offsets

    fitted = fit(real, real[t] * 0.9 + 0.02 * rng.standard_normal((800, D)), t, c, clusters=4, calibrate=False)
    harder = real[t] * 0.9 + 0.04 * rng.standard_normal((800, D))  # twice the offsets the fit saw
    mult = calibrate_offsets(fitted, real, harder, t, c)
    assert all(1.5 < v < 2.7 for v in mult), mult

"""The compact index kinds (SQ8/fp16 storage, OPQ, exact re-ranking) and the target-kept metric.

Expectations: a float64 numpy argsort over the same vectors, or a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="the [faiss] extra is not installed")

from dcssa.runtime.indexing.faiss_build import (  # noqa: E402
    IndexSpec,
    IndexSpecError,
    build_index,
    choose_factory,
    heldout_queries,
    target_kept,
)
from dcssa.runtime.search.faiss_index import load_index, rerank  # noqa: E402


def clustered(n: int, d: int = 16, centres: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(centres, size=n)] + 0.35 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top10(emb: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ emb.astype(np.float64).T), axis=1, kind="stable")[:, :10]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(2000)


def test_target_kept_hand_computed_case():
    truth = np.array([[5, 1, 2], [7, 8, 9], [3, 4, 6], [0, 1, 2]])
    found = np.array([[1, 2, 0], [7, 8, 9], [3, 4, 5], [0, 1, 2]])
    targets = np.array([5, 8, 6, 11])  # held by rows 0, 1, 2 (row 3's target is not in its exact top 3)
    # row 0 loses its target, row 1 keeps it, row 2 loses it: 1 of 3 held
    kept, held = target_kept(found, truth, targets)
    assert held == 3 and kept == pytest.approx(1 / 3)
    assert target_kept(found, truth, np.array([-1, -1, -1, -1])) == (1.0, 0)  # nothing held: nothing lost


@pytest.mark.parametrize("kind, factory", [("hnsw-sq8", "HNSW32,SQ8"), ("hnsw-fp16", "HNSW32,SQfp16"),
                                           ("ivf-sq8", "IVF512,SQ8"), ("opq", "OPQ8,IVF512,PQ8x8")])
def test_compact_kinds_are_the_factories_they_say(kind, factory):
    assert choose_factory(IndexSpec.parse(kind), 20_000, 32)[0] == factory  # IVF: 4 sqrt(N); PQ: dim/4 bytes


# OPQ's rotation is trained by 50 rounds of PQ k-means (FAISS's default): a minute here, so slow
@pytest.mark.parametrize("kind", ["hnsw-sq8", "hnsw-fp16", "ivf-sq8", pytest.param("opq", marks=pytest.mark.slow)])
def test_compact_kinds_reach_their_recall_and_store_less(vectors, kind, tmp_path):
    labels = np.arange(len(vectors), dtype=np.int64) * 3 + 1
    extra = {"nlist": 16} if "ivf" in kind or kind == "opq" else {}
    spec = IndexSpec.parse(kind, target_recall=0.9, **extra, **({"m": 4, "refine": 8} if kind == "opq" else {}))
    fi = build_index(vectors, labels, spec)
    q = heldout_queries(vectors, 200, seed=9)
    want = labels[exact_top10(vectors, q)]
    got = fi.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    assert recall >= 0.85 and abs(recall - fi.info["recall_at_10"]) < 0.06, (recall, fi.info)
    size = sum((tmp_path / f).stat().st_size for f in fi.save(tmp_path))
    if kind != "hnsw-fp16":  # SQ8 / PQ codes: well under the float32 rows (the HNSW links come on top)
        graph = 32 * 2 * 4 * len(vectors) if kind.startswith("hnsw") else 0
        assert size < vectors.nbytes // 3 + graph + 200_000


@pytest.mark.parametrize("kind, params", [("ivfpq", {"m": 4, "nlist": 16, "nprobe": 16}),
                                          ("ivf-sq8", {"nlist": 16, "nprobe": 16}), ("hnsw-sq8", {"ef": 512})])
def test_refine_reranks_the_short_list_exactly(vectors, kind, params):
    """Refined PQ/SQ8 scores are the exact inner products, and a wide enough list gives the exact top 10."""
    labels = np.arange(len(vectors), dtype=np.int64) * 5
    fi = build_index(vectors, labels, IndexSpec.parse(kind, refine=50, **params))
    q = heldout_queries(vectors, 50, seed=3)
    scores, got = fi.search(q, 10)
    rows = got // 5
    assert np.allclose(scores, np.einsum("qd,qkd->qk", q, vectors[rows]), atol=1e-5)
    assert (got == labels[exact_top10(vectors, q)]).mean() > 0.98  # 500 candidates of 2000: exact but for ties


def test_rerank_on_its_own():
    emb = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6]], np.float32)
    labels = np.array([10, 20, 30, 40])
    s, lab = rerank(np.array([[1.0, 0.0]], np.float32), np.array([[20, 40, -1, 10]]), emb, labels, 2)
    assert lab.tolist() == [[10, 40]] and np.allclose(s, [[1.0, 0.8]])


def test_refined_index_needs_its_vectors_after_loading(vectors, tmp_path):
    from dcssa.runtime.errors import GalleryError

    labels = np.arange(len(vectors), dtype=np.int64)
    fi = build_index(vectors, labels, IndexSpec.parse("ivfpq", m=4, nlist=16, nprobe=4, refine=4))
    files = fi.save(tmp_path)
    loaded = load_index(tmp_path, {**fi.info, "files": files})
    q = heldout_queries(vectors, 5, seed=1)
    with pytest.raises(GalleryError, match="attach"):
        loaded.search(q, 10)
    loaded.attach_vectors(np.load(_save(tmp_path, vectors), mmap_mode="r"), labels)
    assert np.array_equal(loaded.search(q, 10)[1], fi.search(q, 10)[1])


def _save(folder, x):
    np.save(folder / "emb.npy", x)
    return folder / "emb.npy"


@pytest.mark.parametrize("kind, params, message", [
    ("ivf", {"refine": 2}, "--refine"), ("hnsw", {"refine": 2}, "--refine"), ("hnsw-sq8", {"nprobe": 4}, "--nprobe"), ("opq", {"ef": 8}, "--ef"),
])
def test_parameters_of_other_kinds_are_refused(kind, params, message):
    with pytest.raises(IndexSpecError, match=message):
        IndexSpec.parse(kind, **params)


def test_kept_is_the_objective_only_with_enough_held_targets(vectors):
    """Targets held by the exact top 10 for fewer than MIN_TARGETS_HELD queries: tuned on recall@10."""
    from dcssa.runtime.indexing.faiss_build import MIN_TARGETS_HELD, exact_topk_labels

    labels = np.arange(len(vectors), dtype=np.int64)
    q = heldout_queries(vectors, 100, seed=2)
    truth = exact_topk_labels(vectors, labels, q)
    spec = IndexSpec.parse("ivf", nlist=16, nprobe=2)
    many = build_index(vectors, labels, spec, queries=q, truth=truth, targets=truth[:, 0])  # all held
    few = truth[:, 0].copy()
    few[MIN_TARGETS_HELD - 1 :] = -1  # one short
    too_few = build_index(vectors, labels, spec, queries=q, truth=truth, targets=few)
    assert many.info["objective"] == "target_kept" and many.info["target_held"] == 100
    assert too_few.info["objective"] == "recall_at_10" and too_few.info["target_held"] == MIN_TARGETS_HELD - 1

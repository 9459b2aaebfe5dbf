"""Approximate (and exact) FAISS indexes over a gallery's photo matrix, with measured recall.

The gallery's ``embeddings.npy`` stays the source of truth and the exact numpy search stays the
default and the reference; a FAISS index is an optional extra file (``index.faiss``, or
``index-000.faiss``... when built in shards) whose search the :class:`~dcssa.runtime.search.gallery.Gallery` uses instead
(:mod:`dcssa.runtime.search.faiss_index`). This module builds, tunes and updates it.

* Inner product on the unit-norm embeddings (``METRIC_INNER_PRODUCT``).
* Every vector carries a stable int64 *label* (``labels.npy`` beside the embeddings): appended
  photos get new labels, removed photos' labels disappear, everybody else keeps theirs.
* Parameters a user does not give are chosen from the catalogue size (FAISS's guidelines: IVF cells
  about 4 sqrt(N), HNSW with 32 links, PQ with one byte per 4 dimensions), and the search-time knob
  (``nprobe``, ``efSearch``) is tuned on held-out queries to reach a target recall@10 against the
  exact search, or, when the queries are partial sketches with known target photos, a target share
  of the sketches whose photo the exact top 10 holds and the index's top 10 keeps (what a person
  drawing sees). The measured recall (and kept share) is recorded with the parameters.
* Compact kinds for large 512-d catalogues: HNSW over SQ8/fp16 codes (``hnsw-sq8``, ``hnsw-fp16``),
  IVF over SQ8 codes (``ivf-sq8``), IVF-PQ and OPQ+IVF-PQ (``ivfpq``, ``opq``) optionally with exact
  re-ranking of a short list (``--refine R``: ``R x k`` candidates re-scored on the gallery's
  memory-mapped embeddings.npy, so no float copy of the catalogue sits in RAM).

FAISS is optional (the ``[faiss]`` extra) and imported lazily: nothing here runs at import time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DcssaError
from ..progress import Say, silent
from ..search.faiss_index import ADD_CHUNK, FaissIndex, faiss_module, hnsw_of, leaves, load_index, search_knob
from .options import INDEX_PARAMS, IndexOptions

#: what ``--index`` accepts besides a FAISS index_factory string
KINDS = ("exact", "flat", "hnsw", "hnsw-sq8", "hnsw-fp16", "ivf", "ivf-sq8", "ivfpq", "opq")

#: the storage codes of the scalar-quantised kinds (FAISS index_factory names)
_SQ_CODES = {"hnsw-sq8": "SQ8", "hnsw-fp16": "SQfp16", "ivf-sq8": "SQ8"}


RECALL_K = 10


DEFAULT_TARGET_RECALL = IndexOptions.target_recall


#: held-out queries: photo embeddings moved to this cosine of their photo (a sketch never matches exactly)
QUERY_COSINE = 0.9


DEFAULT_QUERIES = 500


#: queries whose target the exact top 10 holds, needed before the kept share is the tuning objective
MIN_TARGETS_HELD = 20


#: FAISS warns below 39 training points per centroid
MIN_POINTS_PER_CENTROID = 39


HNSW_EF_CONSTRUCTION = 40


_EF_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048)


class IndexSpecError(DcssaError):
    """An index type or parameter that cannot be built (exit code 2, like every user error)."""


@dataclass
class IndexSpec:
    """What to build: ``kind`` (flat/hnsw/ivf/ivfpq, or ``factory`` for a raw index_factory string)
    and the parameters the user fixed (None: chosen from the size; search knobs tuned)."""

    kind: str
    factory: str | None = None
    nlist: int | None = None
    m: int | None = None
    nprobe: int | None = None
    ef: int | None = None
    refine: int | None = None
    target_recall: float = DEFAULT_TARGET_RECALL

    @classmethod
    def from_options(cls, options: IndexOptions) -> IndexSpec | None:
        """What ``options`` ask for (None: no ``index``; checked as :meth:`parse` checks it)."""
        if options.index is None:
            return None
        params = {p: getattr(options, p) for p in INDEX_PARAMS}
        return cls.parse(options.index, target_recall=options.target_recall, **params)

    @classmethod
    def recorded(cls, info: dict) -> IndexSpec:
        """The spec an existing index was built with (its factory string; the knob re-tuned if it was)."""
        spec = cls(kind="factory", factory=info["factory"], target_recall=info.get("target_recall", DEFAULT_TARGET_RECALL),
                   refine=info.get("refine"))
        if not info.get("tuned"):  # a knob the user fixed stays fixed, through a rebuild too
            spec.nprobe, spec.ef = info.get("search_params", {}).get("nprobe"), info.get("search_params", {}).get("ef")
        return spec

    @property
    def name(self) -> str:
        """The index type as gallery.json records it (a factory string for ``factory``)."""
        return self.factory if self.kind == "factory" else self.kind

    @property
    def builds_index(self) -> bool:
        """False for ``exact``: the numpy search, no FAISS file."""
        return self.kind != "exact"

    @classmethod
    def parse(cls, text: str, **params) -> IndexSpec:
        """``flat|hnsw|ivf|ivfpq`` or a FAISS index_factory string (e.g. ``IVF1024,PQ16``)."""
        if not text or not text.strip():
            raise IndexSpecError("empty --index", hint=f"use one of {', '.join(KINDS)} or a FAISS index_factory string")
        key = text.strip()
        spec = cls(kind=key.lower() if key.lower() in KINDS else "factory",
                   factory=None if key.lower() in KINDS else key, **params)
        for name in INDEX_PARAMS:
            value = getattr(spec, name)
            if value is not None and value < 1:
                raise IndexSpecError(f"--{name} must be >= 1 (got {value})")
        if not 0 < spec.target_recall <= 1:
            raise IndexSpecError(f"--target-recall must be in (0, 1] (got {spec.target_recall})")
        # refine re-ranks a short list exactly: for the kinds whose own scores are approximate (PQ, SQ
        # codes); an HNSW or IVF over float vectors already scores exactly
        graph, cells = ("nlist", "nprobe"), ("m", "ef")
        unused = {"flat": ("nlist", "m", "nprobe", "ef", "refine"), "hnsw": (*graph, "refine"), "hnsw-sq8": graph,
                  "hnsw-fp16": graph, "ivf": (*cells, "refine"), "ivf-sq8": cells, "ivfpq": ("ef",), "opq": ("ef",),
                  "exact": ("nlist", "m", "nprobe", "ef", "refine")}.get(spec.kind, ())
        given = [f"--{n}" for n in unused if getattr(spec, n) is not None]
        if given:
            raise IndexSpecError(f"{', '.join(given)} means nothing for --index {spec.kind}",
                                 hint="drop it, or pick the index type it belongs to (--nlist/--nprobe: ivf*, ivfpq, "
                                      "opq; --m: hnsw* links or ivfpq/opq sub-quantizers; --ef: hnsw*; --refine: "
                                      "ivfpq, opq, ivf-sq8, hnsw-sq8, hnsw-fp16 or a factory string)")
        return spec


def recorded_name(info: dict | None) -> str:
    """The index type of a gallery.json ``index`` entry, named as :attr:`IndexSpec.name` (``exact``: none)."""
    if not info:
        return "exact"
    return info["factory"] if info["type"] == "factory" else info["type"]


def pow2_near(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def choose_factory(spec: IndexSpec, n: int, d: int) -> tuple[str, dict]:
    """The index_factory string (without IDMap) and the build parameters for ``n`` vectors of ``d``."""
    if spec.kind == "factory":
        return spec.factory, {}
    if spec.kind == "flat":
        return "Flat", {}
    if spec.kind.startswith("hnsw"):
        m = spec.m or 32
        codes = f",{_SQ_CODES[spec.kind]}" if spec.kind in _SQ_CODES else ""
        return f"HNSW{m}{codes}", {"m": m, "ef_construction": HNSW_EF_CONSTRUCTION}
    # IVF: about 4 sqrt(N) cells, never fewer than 39 training points per cell
    nlist = spec.nlist or max(1, min(pow2_near(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))
    if nlist > n:
        raise IndexSpecError(f"--nlist {nlist} is more cells than the {n} photos", hint="lower --nlist or use --index hnsw/flat")
    if spec.kind in ("ivf", "ivf-sq8"):
        return f"IVF{nlist},{_SQ_CODES.get(spec.kind, 'Flat')}", {"nlist": nlist}
    m = spec.m or max(1, d // 4)  # one byte per 4 dimensions: 16x smaller than float32
    if d % m:
        raise IndexSpecError(f"--m {m} does not divide the embedding size {d}", hint=f"pick a divisor of {d}, e.g. {d // 4}")
    nbits = 8 if n >= 256 * MIN_POINTS_PER_CENTROID else max(1, min(8, int(math.log2(max(2, n // MIN_POINTS_PER_CENTROID)))))
    ivfpq = f"IVF{nlist},PQ{m}x{nbits}"
    # OPQ rotates the space so the sub-quantizers see balanced variance (a decaying spectrum is not)
    return (f"OPQ{m},{ivfpq}" if spec.kind == "opq" else ivfpq), {"nlist": nlist, "m": m, "nbits": nbits}


def exact_topk_labels(emb: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int = RECALL_K,
                      chunk: int = ADD_CHUNK * 4) -> np.ndarray:
    """Exact top-``k`` labels of every query (numpy, streamed over ``emb`` in chunks: bounded memory)."""
    q = np.asarray(queries, np.float32)
    k = min(k, len(emb))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_l = np.zeros((len(q), 0), np.int64)
    for i in range(0, len(emb), chunk):
        s = q @ np.asarray(emb[i : i + chunk], np.float32).T
        s = np.concatenate([best_s, s], axis=1)
        lab = np.concatenate([best_l, np.broadcast_to(labels[i : i + chunk], (len(q), s.shape[1] - best_l.shape[1]))], axis=1)
        part = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)
        best_s = np.take_along_axis(s, part, 1)
        best_l = np.take_along_axis(lab, part, 1)
    return best_l


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k labels that the index returned in its top-k."""
    k = truth.shape[1]
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else 1.0


def heldout_queries(emb: np.ndarray, count: int = DEFAULT_QUERIES, seed: int = 0,
                    cosine: float = QUERY_COSINE) -> np.ndarray:
    """Queries near random photos: each photo's embedding turned by a random direction to ``cosine``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(emb), size=min(count, len(emb)), replace=False))
    base = np.asarray(emb[rows], np.float32)
    noise = rng.normal(size=base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to the photo
    noise /= np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    q = cosine * base + math.sqrt(1 - cosine**2) * noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _empty_index(factory: str, d: int, params: dict):
    faiss = faiss_module()
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexSpecError(f"FAISS cannot build {factory!r} for dimension {d}: {str(exc).strip().split(': ')[-1]}",
                             hint="check the index_factory string, or use --index flat|hnsw|ivf|ivfpq") from None
    ivf = faiss.try_extract_index_ivf(index)
    if isinstance(ivf, faiss.IndexIVFPQ):
        # polysemous codes serve Hamming-filtered search, which we do not use; training them takes
        # 25x longer than the PQ itself (measured: 27 s against 1 s for 10k vectors of dim 64)
        ivf.do_polysemous_training = False
    if ivf is None:  # IVF indexes take labels themselves; the rest via IDMap
        index = faiss.IndexIDMap(index)
    hnsw = hnsw_of(index)
    if hnsw is not None:
        hnsw.hnsw.efConstruction = params.get("ef_construction", HNSW_EF_CONSTRUCTION)
    return index


def train_sample(emb: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(emb), size=min(n, len(emb)), replace=False))
    return np.ascontiguousarray(emb[rows], np.float32)


def _train_size(factory: str, params: dict, n: int) -> int:
    nlist = params.get("nlist")
    if nlist is None:
        return min(n, 1 << 18)
    # 64 points per centroid: inside FAISS's advice (39 .. 256), a quarter of its k-means cost at the top
    return min(n, max(nlist, 2 ** params.get("nbits", 0)) * 64)


def build_index(emb: np.ndarray, labels: np.ndarray, spec: IndexSpec, *, shards: int = 1,
                queries: np.ndarray | None = None, query_source: str | None = None,
                truth: np.ndarray | None = None, targets: np.ndarray | None = None,
                say: Callable[[str], None] = lambda _m: None,
                bar: Callable[[int], None] = lambda _n: None) -> FaissIndex:
    """Train (on a sample), add in chunks (to ``shards`` parts), tune the search knob, measure recall.

    ``truth`` (the exact top-10 labels of ``queries``) lets a caller that builds several indexes over
    one catalogue pay for the exact reference once: at 10M it is minutes of the build."""
    faiss = faiss_module()
    n, d = emb.shape
    if n == 0:
        raise IndexSpecError("no photos to index")
    if shards < 1 or shards > n:
        raise IndexSpecError(f"--shards {shards} must be between 1 and the {n} photos")
    factory, params = choose_factory(spec, n, d)
    t0 = time.perf_counter()
    template = _empty_index(factory, d, params)
    if not template.is_trained:
        sample = train_sample(emb, _train_size(factory, params, n))
        say(f"index: training {factory} on {len(sample)} photos")
        try:
            template.train(sample)
        except RuntimeError as exc:
            raise IndexSpecError(f"training {factory} on {len(sample)} photos failed: {str(exc).strip().splitlines()[-1]}",
                                 hint="use fewer IVF cells (--nlist) or fewer PQ bits, or --index flat/hnsw for small catalogues") from None
    parts = [template] + [faiss.clone_index(template) for _ in range(shards - 1)]
    bounds = np.linspace(0, n, shards + 1).astype(int)
    say(f"index: adding {n} photos to {factory}" + (f" in {shards} shards" if shards > 1 else ""))
    for part, a, b in zip(parts, bounds[:-1], bounds[1:]):
        FaissIndex(part).add(emb[a:b], labels[a:b], bar)
    if shards > 1:
        index = faiss.IndexShards(d, False, False)  # not threaded, labels are global (not successive)
        for part in parts:
            index.add_shard(part)
    else:
        index = template
    build_s = time.perf_counter() - t0
    fi = FaissIndex(index, parts=parts, info={"type": spec.kind, "factory": factory, "build_params": params, "shards": shards,
                            "build_s": round(build_s, 3)})
    if spec.refine:
        fi.info["refine"] = spec.refine
    fi.info.update(measure_and_tune(fi, emb, labels, spec, queries=queries, query_source=query_source, truth=truth,
                                    targets=targets, say=say))
    return fi


def target_kept(found: np.ndarray, truth: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """(share kept, queries held): of the queries whose target label the exact top-k ``truth`` holds,
    the share whose target the index's top-k ``found`` holds too (1.0 when none is held)."""
    k = truth.shape[1]
    targets = np.asarray(targets, np.int64).reshape(-1, 1)
    held = (truth == targets).any(1)
    kept = (np.asarray(found)[:, :k] == targets).any(1)
    n = int(held.sum())
    return (float(kept[held].mean()) if n else 1.0), n


def _knob_steps(fi: FaissIndex, spec: IndexSpec | None, fixed: dict | None) -> tuple[str | None, list, bool]:
    """(knob, the values to try in order, whether it is tuned)."""
    knob = search_knob(fi)
    user = {"nprobe": spec.nprobe, "ef": spec.ef}.get(knob) if spec else None
    if fixed and knob in fixed:
        return knob, [fixed[knob]], False
    if user is not None:
        return knob, [user], False
    if knob == "nprobe":
        nlist = faiss_module().try_extract_index_ivf(leaves(fi.index)[0]).nlist
        return knob, sorted({min(nlist, 1 << i) for i in range(0, int(math.log2(nlist)) + 2)}), True
    if knob == "ef":
        return knob, list(_EF_STEPS), True
    return knob, [None], False


def measure_and_tune(fi: FaissIndex, emb: np.ndarray, labels: np.ndarray, spec: IndexSpec | None = None, *,
                     queries: np.ndarray | None = None, query_source: str | None = None,
                     truth: np.ndarray | None = None, targets: np.ndarray | None = None, fixed: dict | None = None,
                     say: Callable[[str], None] = lambda _m: None) -> dict:
    """Recall@10 against the exact numpy search on held-out queries; a knob the user did not fix is
    raised step by step until the target is reached (or it can go no further). With ``targets`` (each
    query's target photo label) the target is the kept share (:func:`target_kept`), else recall@10."""
    if queries is None:
        if truth is not None or targets is not None:
            raise ValueError("truth or targets without the queries they belong to")
        queries, query_source = heldout_queries(emb), f"photo embeddings turned to cosine {QUERY_COSINE}"
    if truth is None:
        truth = exact_topk_labels(emb, labels, queries)
    elif len(truth) != len(queries):
        raise ValueError(f"truth holds {len(truth)} rows for {len(queries)} queries")
    if fi.refine:
        fi.attach_vectors(emb, labels)
    knob, steps, tuned = _knob_steps(fi, spec, fixed)
    target = spec.target_recall if spec else DEFAULT_TARGET_RECALL
    held = target_kept(truth, truth, targets)[1] if targets is not None else 0
    # a share of a handful of queries is noise: below MIN_TARGETS_HELD the knob follows recall@10
    objective = "target_kept" if held >= MIN_TARGETS_HELD else "recall_at_10"
    curve = []
    for value in steps:
        if knob is not None:
            fi.set_search_params({knob: value})
        _, found = fi.search(queries, min(RECALL_K, len(emb)))
        point = {knob or "exact": value, "recall_at_10": round(recall_at_k(found, truth), 4)}
        if held:
            point["target_kept"] = round(target_kept(found, truth, targets)[0], 4)
        curve.append(point)
        say(f"index: recall@10 {point['recall_at_10']:.4f}" + (f", target kept {point['target_kept']:.4f}" if held else "")
            + (f" at {knob} {value}" if knob else ""))
        if point[objective] >= target:
            break
    out = {"recall_at_10": curve[-1]["recall_at_10"], "recall_queries": len(queries),
           "recall_query_source": query_source, "target_recall": target, "objective": objective,
           "search_params": {knob: curve[-1][knob]} if knob else {}, "tuned": tuned}
    if held:
        out.update(target_kept=curve[-1]["target_kept"], target_held=held)
    if tuned:
        out["recall_curve"] = curve
    return out


def update_index(folder: Path, info: dict, emb: np.ndarray, labels: np.ndarray, *, kept: int, removed: np.ndarray,
                 queries: np.ndarray | None = None, query_source: str | None = None,
                 targets: np.ndarray | None = None, say: Say = silent,
                 bar: Callable[[int], None] = lambda _n: None) -> FaissIndex:
    """The index saved in ``folder`` (``info``: its gallery.json entry) with the ``removed`` labels dropped
    and the rows of ``emb`` after the first ``kept`` added, re-measured; rebuilt from ``emb`` (no photo
    re-embedded) when its type cannot remove (FAISS's HNSW)."""
    fi = load_index(folder, info, mmap=False)
    spec = IndexSpec.recorded(info)
    queries_kw = {"queries": queries, "query_source": query_source, "targets": targets}
    if not fi.remove(removed):
        say(f"index: {info['factory']} cannot remove vectors; rebuilding it from the stored embeddings")
        rebuilt = build_index(emb, labels, spec, shards=info.get("shards", 1), say=say, bar=bar, **queries_kw)
        rebuilt.info.update(type=info["type"], rebuilt_on_removal=True)
        return rebuilt
    fi.add(emb[kept:], labels[kept:], bar)
    fixed = None if info.get("tuned") else info.get("search_params")
    fi.info.update(measure_and_tune(fi, emb, labels, spec, fixed=fixed, say=say, **queries_kw))
    fi.info.update(appended=info.get("appended", 0) + len(emb) - kept, removed=info.get("removed", 0) + len(removed))
    return fi

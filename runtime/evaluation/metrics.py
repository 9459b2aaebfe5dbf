"""The on-the-fly retrieval metrics of SPEC section 5, as pure numpy on per-step ranks.

A sketch is scored by the rank of its target photo after every partial sketch. Two summaries:
:func:`summarize` is the metric as defined (each sketch weighted by its own step count, every
list reset per sketch); :func:`summarize_published` reproduces what the authors' evaluation code
actually returns, quirks included, so a number can be set beside a published table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``torch.nn.functional.pairwise_distance`` adds this to the difference before the norm.
PAIRWISE_EPS = 1e-6
ACC_KS = (1, 5, 10)
METRIC_KEYS = ("acc@1", "acc@5", "acc@10", "m@A", "m@B", "wm@A", "wm@B")


def distances(query: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """Distances from one embedding to every photo, in float32, as the reference computes them.

    ``F.pairwise_distance`` is ``||q - p + eps||_2``. Every row goes through the same float32
    operations, so two identical photo embeddings get bit-identical distances: a tie stays a tie.
    """
    q = np.asarray(query, np.float32).reshape(1, -1)
    p = np.asarray(photos, np.float32)
    diff = (q - p) + np.float32(PAIRWISE_EPS)
    return np.sqrt(np.sum(diff * diff, axis=1, dtype=np.float32))


def rank_from_distances(dist: np.ndarray, target: int) -> int:
    """How many photos are at least as close as the target (``<=``: ties count against the query)."""
    return int(np.count_nonzero(dist <= dist[target]))


def step_ranks(embeddings: np.ndarray, photos: np.ndarray, target: int) -> np.ndarray:
    """``(T,)`` ranks of photo ``target`` for the ``(T, E)`` embeddings of one sketch's steps."""
    emb = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
    return np.array([rank_from_distances(distances(e, photos), target) for e in emb], np.int64)


def percentile(ranks: np.ndarray, n: int) -> np.ndarray:
    """``(N - rank) / (N - 1)``: 1 when the target is first, 0 when it is last."""
    if n < 2:
        raise ValueError("a percentile needs a gallery of at least 2 photos")
    return (n - np.asarray(ranks, np.float64)) / (n - 1)


def step_weights(steps: int) -> np.ndarray:
    """``exp(1 - t/T) / e`` for t = 1..T: early answers count more (weight 1 at t = 0, 1/e at t = T)."""
    return np.exp(1.0 - np.linspace(1, steps, steps) / steps) / np.e


def _check(rank_lists: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
    if not rank_lists:
        raise ValueError("no sketches to summarise")
    out = [np.asarray(r, np.int64).reshape(-1) for r in rank_lists]
    for i, r in enumerate(out):
        if len(r) == 0:
            raise ValueError(f"sketch {i} has no steps")
        if r.min() < 1 or r.max() > n:
            raise ValueError(f"sketch {i}: ranks must lie in 1..{n}, got {r.min()}..{r.max()}")
    return out


def summarize(rank_lists: Sequence[np.ndarray], n: int) -> dict[str, float]:
    """The SPEC section 5 metrics, corrected: per-sketch means, each sketch with its own weights.

    ``rank_lists[s][t]`` is sketch s's rank at step t (1-based ranks, gallery of ``n`` photos).
    acc@K reads each sketch's own last step.
    """
    ranks = _check(rank_lists, n)
    rows = []
    for r in ranks:
        pct, inv, w = percentile(r, n), 1.0 / r, step_weights(len(r))
        rows.append((pct.mean(), inv.mean(), np.mean(w * pct), np.mean(w * inv)))
    per = np.array(rows)
    last = np.array([r[-1] for r in ranks])
    out = {f"acc@{k}": float(np.mean(last <= k)) for k in ACC_KS}
    out.update(zip(("m@A", "m@B", "wm@A", "wm@B"), map(float, per.mean(axis=0))))
    return out


def summarize_published(rank_lists: Sequence[np.ndarray], n: int) -> tuple[dict[str, float | None], list[str]]:
    """What the authors' ``evaluate_model`` returns for these ranks, quirks and all; plus notes.

    Their code (a) keeps the lists behind wm@A / wm@B across sketches, so sketch s contributes the
    running average over sketches 0..s; (b) takes the step weights from the FIRST sketch's step
    count; (c) reads acc@K from column T0 - 1 of a zero-filled rank matrix (T0 = first sketch's
    step count), so a shorter sketch counts as a hit at every K, and a longer one makes it fail
    with an IndexError (then every value is None); (d) for a rank of 0 (only NaN distances give
    one) counts 1/rank as 1 and leaves the step out of the other lists. Percentiles are float32.
    """
    ranks = [np.asarray(r, np.int64).reshape(-1) for r in rank_lists]
    if not ranks or any(len(r) == 0 for r in ranks):
        raise ValueError("every sketch needs at least one step")
    t0 = len(ranks[0])
    longer = [i for i, r in enumerate(ranks) if len(r) > t0]
    if longer:
        note = (
            f"the published code stops with an IndexError here: sketch {longer[0]} has "
            f"{len(ranks[longer[0]])} steps, more than the first sketch's {t0}"
        )
        return dict.fromkeys(METRIC_KEYS), [note]
    notes = []
    shorter = sum(len(r) < t0 for r in ranks)
    if shorter:
        notes.append(f"{shorter} sketch(es) have fewer steps than the first: the published acc@K counts them as hits")
    factor = step_weights(t0)
    n_f = np.float32(n)
    pct_area, inv_area = [], []
    sum_a = sum_b = 0.0
    count = 0
    run_a, run_b = [], []
    for r in ranks:
        ok = r != 0
        pct = ((n_f - r.astype(np.float32)) / np.float32(n - 1)).astype(np.float64)
        inv = np.where(ok, 1.0 / np.where(ok, r, 1), 1.0)
        inv_area.append(inv.mean())
        with np.errstate(invalid="ignore", divide="ignore"):
            pct_area.append(pct[ok].sum() / ok.sum())
            sum_a += float(pct[ok] @ factor[: len(r)][ok])
            sum_b += float(inv[ok] @ factor[: len(r)][ok])
            count += int(ok.sum())
            run_a.append(np.float64(sum_a) / count)
            run_b.append(np.float64(sum_b) / count)
    last = np.array([r[-1] if len(r) == t0 else 0 for r in ranks])
    out: dict[str, float | None] = {f"acc@{k}": float(np.mean(last <= k)) for k in ACC_KS}
    out.update({"m@A": float(np.mean(pct_area)), "m@B": float(np.mean(inv_area)),
                "wm@A": float(np.mean(run_a)), "wm@B": float(np.mean(run_b))})
    return out, notes


def progress_curve(
    rank_lists: Sequence[np.ndarray], completions: Sequence[np.ndarray], n: int, grid: np.ndarray | None = None
) -> dict[str, list]:
    """Mean 1/rank and mean percentile against sketch completion (share of points drawn).

    At completion c each sketch contributes its latest partial sketch drawn with at most c of its
    points (a sketch with nothing drawn yet by c is left out of that point), so every sketch
    weighs the same whatever its step count.
    """
    grid = np.round(np.arange(0.05, 1.0001, 0.05), 4) if grid is None else np.asarray(grid, np.float64)
    inv = [[] for _ in grid]
    pct = [[] for _ in grid]
    for r, c in zip(rank_lists, completions):
        r = np.asarray(r, np.int64)
        pos = np.searchsorted(np.asarray(c, np.float64), grid + 1e-9, side="right") - 1
        for g, p in enumerate(pos):
            if p >= 0:
                inv[g].append(1.0 / r[p])
                pct[g].append(float(percentile(r[p], n)))
    return {
        "completion": [float(g) for g in grid],
        "mean_inverse_rank": [float(np.mean(v)) if v else None for v in inv],
        "mean_percentile": [float(np.mean(v)) if v else None for v in pct],
        "sketches": [len(v) for v in inv],
    }


def agreement(top: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict[str, float]:
    """How often a run returns what the reference run returns, over every step of every sketch.

    ``top[s]`` is ``(T, k)`` gallery indices, best first. top1_identical: share of steps with the
    same first photo; topk_overlap: mean share of the reference's top-k found in this top-k.
    """
    same, overlap = [], []
    for a, b in zip(top, reference, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"runs disagree on the steps of a sketch: {a.shape} vs {b.shape}")
        same.extend(a[:, 0] == b[:, 0])
        overlap.extend(len(set(x) & set(y)) / max(len(y), 1) for x, y in zip(a.tolist(), b.tolist()))
    return {"top1_identical": float(np.mean(same)), "topk_overlap": float(np.mean(overlap))}


def protocol_gallery_rows(photo_ids: Sequence[str], targets: Sequence[str]) -> tuple[list[int], list[str]]:
    """Rows of the photos ``targets`` name, each once, in order of first appearance; and the targets
    with no photo.

    The published protocol ranks a split's sketches against the photos that split's sketches
    depict, not the whole photo folder: more photos mean more near-ties, so agreement and accuracy
    depend on this choice. `dcssa-rt eval` and the calibration fidelity report both take their
    gallery from here (ids and targets compare exactly: the callers spell them alike).
    """
    row = {}
    for i, pid in enumerate(photo_ids):
        row.setdefault(pid, i)
    rows, missing = [], []
    for t in dict.fromkeys(targets):
        if t in row:
            rows.append(row[t])
        else:
            missing.append(t)
    return rows, missing

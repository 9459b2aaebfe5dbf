"""Realistic embeddings for search benchmarks, fitted on embeddings the runtime itself produced.

Isotropic random unit vectors are the hardest case for approximate search (nine of a query's ten
neighbours are near-ties of noise) and say little about a catalogue. This module fits a small
generative model on a structured demo model's real output and draws catalogues of any size from it:

* photos: a mixture around k-means centres of the real photo embeddings; each cluster's residuals
  are Gaussian with the pooled residual covariance (its eigen-spectrum and directions, so the
  decaying spectrum of a real catalogue is kept) scaled per cluster, then normalised to unit length
  as the runtime's embeddings are;
* sketch queries: every stroke prefix of real tracings pushed through the sketch encoder (and head)
  gives a query with a known target photo. Per band of sketch completion (strokes drawn / strokes
  of the tracing) the query is regressed on its target, ``q = a p + m + r``: a shrink ``a`` towards
  the generic, a mean modality-gap vector ``m`` and residual offsets ``r`` with their own covariance
  spectrum and per-band scale. Generated queries draw a completion from the real ones, a target photo
  from the generated catalogue and an offset from the band's model.

:func:`fit` is run once on the demo models (``dcssa-bench fit-embeddings``) and saved small
(``benchmarks/fits/*.npz``, float16 eigenvectors); :func:`fit_check` compares generated with real
data of the same size (spectrum, nearest-neighbour distances, target ranks) and is saved beside every
benchmark that uses the fit. At sizes past the fitted catalogue the generator keeps the fitted
clusters and lets them grow denser: an extrapolation, named as such in every report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FITS = Path(__file__).parent / "fits"
#: completion bands the query offsets are fitted in (strokes drawn / strokes of the tracing)
BANDS = (0.0, 0.25, 0.5, 0.75, 1.0)
CLUSTERS = 32
CHUNK = 1 << 17


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _eig(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors (columns) of a symmetric matrix."""
    w, v = np.linalg.eigh(cov)
    order = np.argsort(w)[::-1]
    return np.maximum(w[order], 0.0), v[:, order]


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(centres, assignment): Lloyd's k-means with k-means++ seeding (numpy; fits are small)."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iters):
        assign = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), 1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c, np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), 1)


@dataclass
class EmbeddingFit:
    """The fitted generator of one embedding size (see the module docstring)."""

    centres: np.ndarray  # (K, d)
    weights: np.ndarray  # (K,) share of photos per cluster
    cluster_scale: np.ndarray  # (K,) RMS residual norm per cluster
    resid_eigvals: np.ndarray  # (d,) pooled residual covariance, normalised to sum 1
    resid_eigvecs: np.ndarray  # (d, d) columns
    band_shrink: np.ndarray  # (B,) a of q = a p + m + r
    band_mean: np.ndarray  # (B, d) m
    band_scale: np.ndarray  # (B,) RMS norm of r
    offset_eigvals: np.ndarray  # (d,) covariance of r / band_scale, normalised to sum 1
    offset_eigvecs: np.ndarray  # (d, d)
    completions: np.ndarray  # the real queries' completions, drawn from when generating
    source: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.centres.shape[1])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        arrays = {k: (v.astype(np.float16) if k.endswith("eigvecs") else v.astype(np.float32)) for k, v in arrays.items()}
        np.savez_compressed(path, source=np.array(json.dumps(self.source)), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingFit:
        with np.load(path) as z:
            arrays = {k: z[k].astype(np.float64) for k in z.files if k != "source"}
            return cls(**arrays, source=json.loads(str(z["source"])))

    @classmethod
    def named(cls, dim: int) -> EmbeddingFit:
        """The fit shipped for ``dim`` (64: the DC-SSA demo, 512: the ARNet demo)."""
        path = FITS / f"embeddings-{dim}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no embedding fit for dimension {dim} at {path}: run `dcssa-bench fit-embeddings`")
        return cls.load(path)

    # -- generating ---------------------------------------------------------------------------

    def photo_chunk(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n unit photo embeddings float32, their clusters)."""
        k = rng.choice(len(self.weights), size=n, p=self.weights / self.weights.sum())
        z = rng.standard_normal((n, self.dim), dtype=np.float32)
        basis = (self.resid_eigvecs * np.sqrt(self.resid_eigvals)).T.astype(np.float32)  # (d, d) rows scaled
        x = self.centres[k].astype(np.float32) + (z @ basis) * self.cluster_scale[k, None].astype(np.float32)
        return unit(x).astype(np.float32), k

    def photo_chunks(self, n: int, seed: int = 0, chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """``n`` photos in chunks; chunk i depends on (seed, i) only, so any chunk can be redrawn alone."""
        for i, start in enumerate(range(0, n, chunk)):
            yield self.photo_chunk(min(chunk, n - start), np.random.default_rng([seed, i]))[0]

    def photos(self, n: int, seed: int = 0, chunk: int = CHUNK) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        for i, x in enumerate(self.photo_chunks(n, seed, chunk)):
            out[i * chunk : i * chunk + len(x)] = x
        return out

    def queries(self, targets: np.ndarray, rng: np.random.Generator,
                completions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(queries, their completions) for the target photo embeddings ``targets`` (n, d)."""
        n = len(targets)
        c = rng.choice(self.completions, size=n) if completions is None else np.asarray(completions, np.float64)
        return self.offset(targets, band_of(c), rng.standard_normal((n, self.dim))), c

    def offset(self, targets: np.ndarray, bands: np.ndarray, z: np.ndarray, scale: float | np.ndarray = 1.0) -> np.ndarray:
        """Unit queries ``a p + m + r`` of ``targets`` in ``bands``, ``r`` from the standard normals ``z``."""
        r = (z * np.sqrt(self.offset_eigvals)) @ self.offset_eigvecs.T
        q = self.band_shrink[bands, None] * targets + self.band_mean[bands] + r * (self.band_scale[bands] * scale)[:, None]
        return unit(q).astype(np.float32)


def band_of(completion: np.ndarray) -> np.ndarray:
    """The completion band of each query (bands are (lo, hi], the first one closed)."""
    return np.clip(np.searchsorted(np.asarray(BANDS), completion, side="left") - 1, 0, len(BANDS) - 2)


def completions_of(targets: list | np.ndarray) -> np.ndarray:
    """Completion (stroke j of m -> j/m) of consecutive queries of one tracing each (one target per run)."""
    targets = list(targets)
    out = np.empty(len(targets))
    start = 0
    for i in range(1, len(targets) + 1):
        if i == len(targets) or targets[i] != targets[start]:
            m = i - start
            out[start:i] = np.arange(1, m + 1) / m
            start = i
    return out


# -- fitting -------------------------------------------------------------------------------------


def fit_photos(x: np.ndarray, clusters: int = CLUSTERS, seed: int = 0) -> dict:
    x = np.asarray(x, np.float64)
    centres, assign = kmeans(x, clusters, seed)
    resid = x - centres[assign]
    counts = np.bincount(assign, minlength=clusters).astype(np.float64)
    scale = np.sqrt(np.bincount(assign, (resid**2).sum(1), minlength=clusters) / np.maximum(counts, 1))
    norm = resid / np.maximum(scale[assign, None], 1e-12)  # each cluster's residuals at unit RMS
    w, v = _eig(norm.T @ norm / len(x))
    return {"centres": centres, "weights": counts / counts.sum(), "cluster_scale": scale,
            "resid_eigvals": w / w.sum(), "resid_eigvecs": v}


def fit_queries(queries: np.ndarray, targets: np.ndarray, completions: np.ndarray) -> dict:
    """The per-band regression ``q = a p + m + r`` and the pooled spectrum of ``r``."""
    q, p = np.asarray(queries, np.float64), np.asarray(targets, np.float64)
    b = band_of(completions)
    d, bands = q.shape[1], len(BANDS) - 1
    shrink, mean, scale = np.ones(bands), np.zeros((bands, d)), np.ones(bands)
    resid = np.zeros_like(q)
    for j in range(bands):
        sel = b == j
        if sel.sum() < 2:
            continue
        qc, pc = q[sel] - q[sel].mean(0), p[sel] - p[sel].mean(0)
        shrink[j] = (qc * pc).sum() / max((pc * pc).sum(), 1e-12)
        mean[j] = (q[sel] - shrink[j] * p[sel]).mean(0)
        r = q[sel] - shrink[j] * p[sel] - mean[j]
        scale[j] = np.sqrt((r**2).sum(1).mean())
        resid[sel] = r / max(scale[j], 1e-12)
    w, v = _eig(resid.T @ resid / len(q))
    return {"band_shrink": shrink, "band_mean": mean, "band_scale": scale, "offset_eigvals": w / w.sum(),
            "offset_eigvecs": v, "completions": np.asarray(completions, np.float64)}


def fit(photos: np.ndarray, queries: np.ndarray, target_rows: np.ndarray, completions: np.ndarray, *,
        clusters: int = CLUSTERS, seed: int = 0, calibrate: bool = True, source: dict | None = None) -> EmbeddingFit:
    """The generator fitted on real ``photos`` and real ``queries`` (target photo row, completion each)."""
    photos = np.asarray(photos, np.float64)
    model = EmbeddingFit(**fit_photos(photos, clusters, seed),
                         **fit_queries(queries, photos[np.asarray(target_rows)], completions),
                         source={**(source or {}), "photos": len(photos), "queries": len(queries),
                                 "clusters": clusters})
    if calibrate:
        model.source["offset_scale_calibration"] = calibrate_offsets(model, photos, queries, target_rows, completions,
                                                                     seed + 1)
    return model


def calibrate_offsets(model: EmbeddingFit, photos: np.ndarray, queries: np.ndarray, target_rows: np.ndarray,
                      completions: np.ndarray, seed: int = 1, draws: int = 4) -> list[float]:
    """Scale each band's offsets so generated queries rank their target as the real ones do.

    The regression's residuals are fitted as Gaussian in their own spectrum; real sketch offsets
    lean towards the photos a partial sketch resembles, which a Gaussian does not, so at the real
    size generated targets would rank too well. Per band, the scale whose mean log target rank (in
    a generated catalogue of the real size, same noise for every trial) equals the real one is found
    by bisection; the multipliers are returned (and applied to ``band_scale``)."""
    rng = np.random.default_rng(seed)
    real = np.log(target_ranks(photos, queries, target_rows))
    gen = model.photo_chunk(len(photos), rng)[0]
    bands = band_of(np.asarray(completions))
    out = []
    for j in range(len(BANDS) - 1):
        sel = bands == j
        if sel.sum() < 5:
            out.append(1.0)
            continue
        t = rng.integers(len(gen), size=draws * int(sel.sum()))
        z = rng.standard_normal((len(t), model.dim))
        b = np.full(len(t), j)

        def mean_log_rank(log_mult: float) -> float:
            return float(np.log(target_ranks(gen, model.offset(gen[t], b, z, np.exp(log_mult)), t)).mean())

        lo, hi = -2.0, 2.0
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean_log_rank(mid) < real[sel].mean() else (lo, mid)
        mult = float(np.exp((lo + hi) / 2))
        model.band_scale[j] *= mult
        out.append(round(mult, 4))
    return out


# -- checking a fit against the real data ------------------------------------------------------


def spectrum(x: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending) of the covariance of ``x``, normalised to sum 1."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    w = np.linalg.eigvalsh(x.T @ x / len(x))[::-1]
    return np.maximum(w, 0) / max(w.sum(), 1e-12)


def nn_cosine_distance(x: np.ndarray) -> np.ndarray:
    """Each row's cosine distance to its nearest other row (unit rows)."""
    x = np.asarray(x, np.float32)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return 1.0 - s.max(1)


def target_ranks(photos: np.ndarray, queries: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target photo under exact inner-product search."""
    s = np.asarray(queries, np.float32) @ np.asarray(photos, np.float32).T
    own = s[np.arange(len(s)), target_rows]
    return 1 + (s > own[:, None]).sum(1)


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _summary(ranks: np.ndarray, nn: np.ndarray, spec: np.ndarray) -> dict:
    return {"spectrum_top": [round(float(v), 5) for v in spec[:16]],
            "dims_for_90pct_variance": int(np.searchsorted(np.cumsum(spec), 0.9) + 1),
            "nn_distance_quantiles": [round(float(v), 4) for v in np.quantile(nn, QUANTILES)],
            "target_rank_quantiles": [float(v) for v in np.quantile(ranks, QUANTILES)],
            "target_in_top1": round(float((ranks <= 1).mean()), 4),
            "target_in_top10": round(float((ranks <= 10).mean()), 4)}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (largest gap between the empirical CDFs)."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def fit_check(model: EmbeddingFit, photos: np.ndarray, queries: np.ndarray, target_rows: np.ndarray,
              completions: np.ndarray, seed: int = 1) -> dict:
    """Generated vs real at the real catalogue's size: spectra, nearest-neighbour distances, target ranks."""
    rng = np.random.default_rng(seed)
    gen_p = model.photo_chunk(len(photos), rng)[0]
    gen_t = rng.integers(len(gen_p), size=len(queries))
    gen_q = model.queries(gen_p[gen_t], rng, completions=completions)[0]
    real = {"spectrum": spectrum(photos), "nn": nn_cosine_distance(photos),
            "ranks": target_ranks(photos, queries, target_rows)}
    gen = {"spectrum": spectrum(gen_p), "nn": nn_cosine_distance(gen_p), "ranks": target_ranks(gen_p, gen_q, gen_t)}
    bands = band_of(completions)
    by_band = [{"band": f"({BANDS[j]}, {BANDS[j + 1]}]", "queries": int((bands == j).sum()),
                "real_in_top10": round(float((real["ranks"][bands == j] <= 10).mean()), 4),
                "generated_in_top10": round(float((gen["ranks"][bands == j] <= 10).mean()), 4)}
               for j in range(len(BANDS) - 1) if (bands == j).any()]
    return {"dim": model.dim, "photos": len(photos), "queries": len(queries), "source": model.source,
            "real": _summary(real["ranks"], real["nn"], real["spectrum"]),
            "generated": _summary(gen["ranks"], gen["nn"], gen["spectrum"]),
            "ks_nn_distance": round(_ks(real["nn"], gen["nn"]), 4),
            "ks_log_target_rank": round(_ks(np.log(real["ranks"]), np.log(gen["ranks"])), 4),
            "spectrum_l1": round(float(np.abs(real["spectrum"] - gen["spectrum"]).sum()), 4),
            "by_completion": by_band,
            "curves": {"real": {k: v.tolist() for k, v in real.items()},
                       "generated": {k: v.tolist() for k, v in gen.items()}}}


def plot_fit_checks(checks: list[dict], path: str | Path) -> None:
    """Generated vs real: spectra (log), nearest-neighbour distance CDFs, target rank CDFs."""
    from dcssa.runtime.plotting import agg_figure

    fig = agg_figure((13, 3.8 * len(checks)), "the embedding fit check plot", layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(checks), 3))
    for row, chk in zip(axes, checks):
        for name, style in (("real", "-"), ("generated", "--")):
            c = chk["curves"][name]
            row[0].semilogy(np.arange(1, len(c["spectrum"]) + 1), np.maximum(c["spectrum"], 1e-9), style, label=name)
            for ax, key in ((row[1], "nn"), (row[2], "ranks")):
                v = np.sort(c[key])
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), style, label=name)
        row[0].set_title(f"{chk['dim']}-d: covariance spectrum", fontsize=9)
        row[1].set_title(f"{chk['dim']}-d: nearest-neighbour cosine distance (KS {chk['ks_nn_distance']})", fontsize=9)
        row[2].set_title(f"{chk['dim']}-d: target rank of sketch prefixes (KS {chk['ks_log_target_rank']})", fontsize=9)
        row[2].set_xscale("log")
        row[0].set_xlabel("component")
        row[1].set_xlabel("1 - cosine")
        row[2].set_xlabel("rank of the drawn photo (exact search)")
        for ax in row:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def isotropic_chunks(n: int, dim: int, seed: int = 0, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """The worst case: random unit vectors (no spectrum, no clusters), chunk i from (seed, i) alone."""
    for i, start in enumerate(range(0, n, chunk)):
        x = np.random.default_rng([seed, i]).standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        yield unit(x)

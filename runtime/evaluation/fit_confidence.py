"""``dcssa-rt calibrate-confidence``: fit the per-stroke confidence on sketches with ground truth, measure it on others.

Every sketch of the fitting split and of the held-out split is replayed through a live
:class:`~dcssa.runtime.session.StrokeSession` on the gallery the calibrator is for (the causal
protocol: what a user sees after each stroke). Each stroke gives one feature row
(:data:`~dcssa.runtime.search.confidence.FEATURES`) and two labels: the session's top-1 IS the target, the
target is IN its top 10. One logistic model per label is fitted on the fitting split with
scikit-learn (imported only here, when fitting) and stored in the gallery folder; the held-out
split then measures it (reliability, ECE, Brier, against the raw top-1 score used as a probability)
and the early-stop trade-off. Everything user-facing fails with a message naming the file and the fix.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import refuse_existing, staged_dir
from ..contract.bundle import Bundle
from ..data.qmul import DatasetError, QmulSplit, load_split
from ..errors import DcssaError, MissingExtra
from ..extras import require
from ..plotting import agg_figure
from ..progress import SILENT, Reporter
from ..search.confidence import (
    CONFIDENCE_FILE,
    FEATURES,
    SCHEMA,
    TARGETS,
    Calibrator,
    ConfidenceError,
    LogisticModel,
    calibrator_path,
    fingerprint,
)
from ..search.gallery import Gallery
from ..session import Retriever
from ..stroke.parse import points_to_strokes
from . import ConfidenceOptions


def load_strokes_split(dataset: str | Path, split: str, layout: str, limit: int | None) -> QmulSplit:
    """The stroke sketches of a split: the QMUL pickle, or the coordinate file beside an ARNet folder."""
    if layout == "qmul":
        return load_split(dataset, split, limit=limit)
    from ..data.arnet import load_arnet_split

    data = load_arnet_split(dataset, split, limit=limit)
    if not data.sketches:
        raise DatasetError(f"no stroke sketches of the {split!r} split: replaying needs the strokes, not only PNGs",
                           path=data.coordinate_file,
                           hint="put the QMUL-style <Name>_Coordinate file beside trainA/testA "
                                "(`dcssa-rt make-dataset --format arnet` writes one)")
    return data


REPORT_JSON = "confidence.json"
REPORT_MD = "confidence.md"
RELIABILITY_PNG = "reliability.png"
EARLY_STOP_PNG = "early_stop.png"
BINS = 10
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 .. 0.95


@dataclass
class Replay:
    """Per-stroke rows of a set of sketches: features, labels, target rank, which sketch and step."""

    features: np.ndarray  # (n, len(FEATURES))
    top1: np.ndarray  # (n,) bool: the session's top-1 is the target
    top10: np.ndarray  # (n,) bool: the target is among the session's top 10
    rank: np.ndarray  # (n,) 1 + photos scoring strictly higher than the target
    sketch: np.ndarray  # (n,) index into keys
    step: np.ndarray  # (n,) 1-based stroke number
    keys: list[str]

    def label(self, target: str) -> np.ndarray:
        return self.top1 if target == "top1" else self.top10

    def last(self) -> np.ndarray:
        """Row index of every sketch's last stroke."""
        return np.flatnonzero(np.r_[self.sketch[1:] != self.sketch[:-1], True])


def replay(retriever: Retriever, split: QmulSplit, *, report: Reporter = SILENT, label: str = "replay") -> Replay:
    """Every sketch of ``split`` stroke by stroke through ``retriever`` (top-k >= 10, the full gallery)."""
    g = retriever.gallery
    by_stem: dict[str, int] = {}
    for i, pid in enumerate(g.ids):
        by_stem.setdefault(Path(pid).stem, i)
    missing = [s for s in split.sketches if s.photo not in by_stem]
    if missing:
        raise DatasetError(
            f"the target photo of sketch {missing[0].key!r} ({missing[0].photo}) is not in the gallery"
            + (f" (and {len(missing) - 1} more sketches)" if len(missing) > 1 else ""),
            path=g.path, hint=f"index the photos of both splits into the gallery: `dcssa-rt index "
                              f"{split.photo_dir if split.photo_dir.name == 'photo' else 'FOLDER-WITH-trainB-AND-testB'} "
                              f"--bundle BUNDLE --out {g.path or 'GALLERY'}`")
    rows, top1, top10, ranks, sk, steps = [], [], [], [], [], []
    with report.bar(len(split.sketches), label, "sketch", leave=True) as bar:
        for n, s in enumerate(split.sketches):
            target = by_stem[s.photo]
            session = retriever.session()
            for t, stroke in enumerate(points_to_strokes(s.points), 1):
                res = session.add_stroke(stroke)
                scores = g.scores(res.embedding)
                rows.append(res.signals)
                top1.append(int(res.indices[0]) == target)
                top10.append(target in res.indices[:10].tolist())
                ranks.append(1 + int(np.count_nonzero(scores > scores[target])))
                sk.append(n)
                steps.append(t)
            bar.update(1)
    return Replay(np.array(rows, np.float64).reshape(-1, len(FEATURES)), np.array(top1, bool), np.array(top10, bool),
                  np.array(ranks, np.int64), np.array(sk, np.int64), np.array(steps, np.int64),
                  [s.key for s in split.sketches])


def fit_model(x: np.ndarray, y: np.ndarray, *, what: str = "top1", where: str | Path | None = None) -> LogisticModel:
    """StandardScaler + LogisticRegression (scikit-learn), returned as plain numbers."""
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        state = "correct" if y.all() else "wrong"
        raise ConfidenceError(
            f"cannot fit P({what}): the {what} answer of every one of the {len(y)} fitting strokes is {state}",
            path=where, hint="fit on more, or more varied, sketches (another --fit-split or dataset)")
    linear_model = require("sklearn.linear_model", "fitting the confidence")
    preprocessing = require("sklearn.preprocessing", "fitting the confidence")
    LogisticRegression, StandardScaler = linear_model.LogisticRegression, preprocessing.StandardScaler  # noqa: N806
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    return LogisticModel(scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64),
                         lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))


# -- measures -----------------------------------------------------------------------------------------
def bin_index(p: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Equal-width bins of [0, 1]; 1.0 falls in the last."""
    return np.minimum((np.asarray(p, np.float64) * bins).astype(np.int64), bins - 1)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per bin: its range, how many strokes, their mean predicted probability and their observed frequency."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    b = bin_index(p, bins)
    out = []
    for i in range(bins):
        m = b == i
        n = int(m.sum())
        out.append({"lo": i / bins, "hi": (i + 1) / bins, "count": n,
                    "mean_p": float(p[m].mean()) if n else None, "frequency": float(y[m].mean()) if n else None})
    return out


def ece(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: sum over bins of (share of strokes) x |mean p - observed frequency|."""
    n = len(p)
    return float(sum(r["count"] / n * abs(r["mean_p"] - r["frequency"]) for r in reliability(p, y, bins) if r["count"]))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2))


def naive(rep: Replay) -> np.ndarray:
    """The raw top-1 score read as a probability (clipped to [0, 1]): what the app had before."""
    return np.clip(rep.features[:, 0], 0.0, 1.0)


def early_stop(p: np.ndarray, rep: Replay, thresholds=THRESHOLDS) -> list[dict]:
    """Stop each sketch at its first stroke with p >= threshold (else at its last): how early, how right."""
    p = np.asarray(p, np.float64)
    last = rep.last()
    first = np.r_[0, last[:-1] + 1]
    total = int(rep.step[last].sum())
    end_acc = float(rep.top1[last].mean())
    out = []
    for thr in thresholds:
        stop = np.array([f + (int(np.argmax(p[f:l + 1] >= thr)) if (p[f:l + 1] >= thr).any() else l - f)
                         for f, l in zip(first, last)])
        early = stop < last
        out.append({"threshold": float(thr), "stopped_early": float(early.mean()),
                    "strokes_saved": float((last - stop).sum() / total),
                    "mean_strokes_saved": float((last - stop).mean()),
                    "accuracy_at_stop": float(rep.top1[stop].mean()), "accuracy_at_end": end_acc,
                    "accuracy_of_early_stops": float(rep.top1[stop[early]].mean()) if early.any() else None})
    return out


def measure(models: dict[str, LogisticModel], rep: Replay) -> dict:
    """The held-out numbers: ECE / Brier of the calibrator and of the raw score, reliability bins, early stop."""
    out: dict = {"strokes": len(rep.top1), "sketches": len(rep.keys), "targets": {}}
    raw = naive(rep)
    for t in TARGETS:
        y = rep.label(t)
        p = models[t].predict(rep.features)
        out["targets"][t] = {
            "base_rate": float(y.mean()),
            "calibrated": {"ece": ece(p, y), "brier": brier(p, y), "reliability": reliability(p, y)},
            "raw_score": {"ece": ece(raw, y), "brier": brier(raw, y), "reliability": reliability(raw, y)},
        }
    out["early_stop"] = {"calibrated": early_stop(models["top1"].predict(rep.features), rep),
                         "raw_score": early_stop(raw, rep)}
    out["summary"] = {t: {k: round(out["targets"][t][w][k], 4) for w in ("calibrated",) for k in ("ece", "brier")}
                      | {f"raw_{k}": round(out["targets"][t]["raw_score"][k], 4) for k in ("ece", "brier")}
                      for t in TARGETS}
    return out


# -- the command's work -------------------------------------------------------------------------------
def _write_json_atomically(path: Path, doc: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def calibrator_doc(models: dict[str, LogisticModel], fp: dict, fit: Replay, fitted_on: dict, holdout: dict) -> dict:
    return {
        "schema": SCHEMA,
        "tool": "dcssa-rt calibrate-confidence",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "features": list(FEATURES),
        "targets": list(TARGETS),
        "models": {t: m.to_dict() for t, m in models.items()},
        "fingerprint": fp,
        "fitted_on": fitted_on,
        "holdout": {k: holdout[k] for k in ("split", "sketches", "strokes", "summary")},
        "data": {"columns": list(FEATURES), "rows": np.round(fit.features, 7).tolist(),
                 "top1": fit.top1.astype(int).tolist(), "top10": fit.top10.astype(int).tolist(),
                 "rank": fit.rank.tolist(), "sketch": fit.sketch.tolist(), "step": fit.step.tolist(), "keys": fit.keys},
    }


def calibrate(dataset: str | Path, bundle: str | Path | Bundle, gallery: str | Path, out: str | Path,
              options: ConfidenceOptions | None = None, *, report: Reporter = SILENT) -> dict:
    """Replay, fit, measure; writes GALLERY/confidence.json and the report folder ``out``; returns the report."""
    options = options or ConfidenceOptions()
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    g = Gallery.load(gallery, b)
    out, target = Path(out), calibrator_path(gallery)
    if target.exists() and not options.force:
        raise DcssaError("already holds a confidence calibrator", path=target,
                         hint="pass --force to refit and replace it")
    refuse_existing(out, options.force)
    fit_data = load_strokes_split(dataset, options.fit_split, options.layout, options.limit)
    held_data = load_strokes_split(dataset, options.holdout_split, options.layout, options.limit)
    longest = max(len(points_to_strokes(s.points)) for s in fit_data.sketches + held_data.sketches)
    r = Retriever(b, g, backend=options.backend, precision=options.precision, threads=options.threads, topk=10,
                  confidence=None, max_strokes=max(b.max_strokes, longest))
    fit = replay(r, fit_data, report=report, label=f"fit ({options.fit_split})")
    held = replay(r, held_data, report=report, label=f"held out ({options.holdout_split})")
    models = {t: fit_model(fit.features, fit.label(t), what=t, where=fit_data.coordinate_file) for t in TARGETS}
    result = measure(models, held)
    result["split"] = options.holdout_split
    fitted_on = {"dataset": str(Path(dataset).resolve()), "format": options.layout, "split": options.fit_split,
                 "sketches": len(fit.keys), "strokes": len(fit.top1),
                 "positives": {t: int(fit.label(t).sum()) for t in TARGETS},
                 "backend": r.backend.name, "precision": options.precision}
    doc = calibrator_doc(models, fingerprint(b, g), fit, fitted_on, result)
    Calibrator.from_doc(json.loads(json.dumps(doc)))  # what is written must load
    rep = {"tool": "dcssa-rt calibrate-confidence", "created": doc["created"], "calibrator": str(target),
           "bundle": {"path": str(b.path), "family": b.family, "demo": b.demo}, "gallery": {"path": str(g.path), "photos": len(g)},
           "fitted_on": fitted_on, "holdout": result, "models": doc["models"], "features": list(FEATURES)}
    with staged_dir(out, force=options.force) as tmp:
        rep["files"] = write_confidence_report(tmp, rep, report=report)
        _write_json_atomically(target, doc)  # last: the report folder appears with it
    return rep


# -- the report -----------------------------------------------------------------------------------------
def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(rep: dict) -> str:
    h, f = rep["holdout"], rep["fitted_on"]
    lines = [f"# dcssa-rt calibrate-confidence: {Path(f['dataset']).name}", ""]
    if rep["bundle"]["demo"]:
        lines += ["> DEMO bundle (synthetic weights): the numbers show the method, not a real model.", ""]
    lines += [
        f"Fitted on {f['sketches']} sketches ({f['strokes']} strokes) of the {f['split']} split; measured on "
        f"{h['sketches']} held-out sketches ({h['strokes']} strokes) of the {h['split']} split, against the "
        f"{rep['gallery']['photos']} photos of `{rep['gallery']['path']}`. Backend {f['backend']}, {f['precision']}.",
        "", "## Calibration on the held-out sketches", "",
        "| target | base rate | ECE calibrated | ECE raw score | Brier calibrated | Brier raw score |", "|---|---|---|---|---|---|"]
    for t, v in h["targets"].items():
        lines.append(f"| P({t}) | {v['base_rate']:.3f} | {v['calibrated']['ece']:.4f} | {v['raw_score']['ece']:.4f} | "
                     f"{v['calibrated']['brier']:.4f} | {v['raw_score']['brier']:.4f} |")
    lines += ["", "ECE: 10 equal-width bins, weighted by their share of strokes. Raw score: the top-1 cosine score "
              "clipped to [0, 1] and read as a probability.", "",
              "## Early stop (stop at the first stroke with P(top1) >= threshold)", "",
              "| threshold | stopped early | strokes saved | accuracy at stop | accuracy at end | raw score: stopped early | raw: accuracy at stop |",
              "|---|---|---|---|---|---|---|"]
    for c, n in zip(h["early_stop"]["calibrated"], h["early_stop"]["raw_score"]):
        lines.append(f"| {c['threshold']:.2f} | {c['stopped_early']:.3f} | {c['strokes_saved']:.3f} | "
                     f"{c['accuracy_at_stop']:.3f} | {c['accuracy_at_end']:.3f} | {n['stopped_early']:.3f} | {n['accuracy_at_stop']:.3f} |")
    lines += ["", "Strokes saved: share of all held-out strokes not needed; accuracy: top-1 is the target.", ""]
    if RELIABILITY_PNG in rep.get("files", []):
        lines += [f"![reliability]({RELIABILITY_PNG})", ""]
    if EARLY_STOP_PNG in rep.get("files", []):
        lines += [f"![early stop]({EARLY_STOP_PNG})", ""]
    return "\n".join(lines)


def plot_reliability(rep: dict, path: Path) -> None:
    fig = agg_figure((10, 4.4), f"the plot {RELIABILITY_PNG}")
    for ax, (t, v) in zip(fig.subplots(1, 2), rep["holdout"]["targets"].items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for key, name, marker in (("calibrated", "calibrated", "o"), ("raw_score", "raw top-1 score", "s")):
            bins = [b for b in v[key]["reliability"] if b["count"]]
            ax.plot([b["mean_p"] for b in bins], [b["frequency"] for b in bins], marker=marker,
                    label=f"{name} (ECE {v[key]['ece']:.3f}, Brier {v[key]['brier']:.3f})")
        ax.set_xlabel(f"predicted P({t})")
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(f"{t}: {rep['holdout']['strokes']} held-out strokes", fontsize="medium")
    fig.savefig(path, dpi=110)


def plot_early_stop(rep: dict, path: Path) -> None:
    fig = agg_figure((7, 4.4), f"the plot {EARLY_STOP_PNG}")
    ax = fig.subplots()
    rows = rep["holdout"]["early_stop"]["calibrated"]
    x = [r["threshold"] for r in rows]
    ax.plot(x, [r["stopped_early"] for r in rows], marker="o", label="sketches stopped before their last stroke")
    ax.plot(x, [r["strokes_saved"] for r in rows], marker="o", label="share of strokes saved")
    ax.plot(x, [r["accuracy_at_stop"] for r in rows], marker="o", label="top-1 accuracy at the stop")
    ax.axhline(rows[0]["accuracy_at_end"], color="grey", linestyle="--", label="top-1 accuracy at the last stroke")
    ax.set_xlabel("threshold on calibrated P(top1)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"early stop on {rep['holdout']['sketches']} held-out sketches", fontsize="medium")
    fig.savefig(path, dpi=110)


def write_confidence_report(folder: Path, rep: dict, *, report: Reporter = SILENT) -> list[str]:
    files = [REPORT_JSON, REPORT_MD]
    try:
        plot_reliability(rep, folder / RELIABILITY_PNG)
        plot_early_stop(rep, folder / EARLY_STOP_PNG)
        files += [RELIABILITY_PNG, EARLY_STOP_PNG]
    except MissingExtra:
        report.warn("plots not written: matplotlib is missing (pip install 'dcssa-rt[report]')")
    rep["files"] = files
    (folder / REPORT_MD).write_text(markdown(rep))
    (folder / REPORT_JSON).write_text(json.dumps(rep, indent=1) + "\n")
    return files


__all__ = ["CONFIDENCE_FILE", "Replay", "brier", "calibrate", "early_stop", "ece", "fit_model", "measure", "reliability",
           "replay"]

"""``dcssa-bench openvino-fastpath``: the Intel fast path: onnxruntime fp32 vs openvino fp32 / bf16 /
int8, per stroke, through sessions.

Every method replays the same tracings stroke by stroke in live sessions (``Retriever.session``),
interleaved stroke by stroke (method order rotating) after a warm-up sketch, so a machine shared
with other work slows all methods alike; the ratio to onnxruntime fp32 is the number to read.
Fidelity is measured on every stroke prefix against the onnxruntime fp32 session with
:func:`dcssa.calibration.fidelity.compare` (cosine, top-1 agreement, top-10 overlap), per folder of
strokes JSON (e.g. catalogue tracings and held-out shapes of another seed).

    dcssa-bench openvino-fastpath --bundle B --strokes D/Shapes/strokes \\
        --strokes H/Shapes/strokes --out fastpath.json
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.env import environment
from dcssa.benchmarks.markdown import row, rule
from dcssa.benchmarks.stroke_latency import rotated
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options, threads_option
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Progress
from dcssa.runtime.stroke.parse import load_strokes_file

REFERENCE = ("ort-cpu", "fp32")
REFERENCE_NAME = "/".join(REFERENCE)
METHODS = (REFERENCE, ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"), ("ort-cpu", "int8"))
MARGIN = 0.01  # top-1 agreement is also given over queries whose fp32 top-1 leads the 2nd by this much


def _load_sketches(folder: Path) -> list[list[np.ndarray]]:
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise DcssaError("no strokes JSON files here", path=folder, hint="pass a folder like D/Shapes/strokes")
    return [load_strokes_file(f) for f in files]


Outputs = dict[str, list[tuple[np.ndarray, np.ndarray]]]  # method -> (feature, embedding) per prefix


def _set_label(folder: Path) -> str:
    """``D/Shapes/strokes`` -> ``D/Shapes``; any other folder by its path."""
    folder = Path(folder)
    return f"{folder.parent.parent.name}/{folder.parent.name}" if folder.name == "strokes" else str(folder)


def _retrievers(bundle: Bundle, gallery: Gallery, methods, threads: int | None) -> tuple[dict[str, Retriever], dict]:
    """A Retriever per (backend, precision) that runs here; the reference must, the others may be skipped."""
    retrievers, skipped = {}, {}
    for backend, precision in methods:
        name = f"{backend}/{precision}"
        try:
            retrievers[name] = Retriever(bundle, gallery, backend=backend, precision=precision, threads=threads)
        except DcssaError as exc:
            skipped[name] = exc.message
    if REFERENCE_NAME not in retrievers:
        raise DcssaError("the onnxruntime fp32 reference cannot run", hint=str(skipped))
    return retrievers, skipped


def _replay(retrievers: dict[str, Retriever], sets: dict[str, list], bar) -> tuple[dict, dict, dict[str, Outputs]]:
    """Every sketch stroke by stroke in one live session per method, method order rotating per stroke.

    Returns total ms and encoder ms per stroke per method, and each set's outputs per method.
    """
    names = list(retrievers)
    sessions = {n: r.session() for n, r in retrievers.items()}
    for s in sessions.values():  # warm-up: first-call allocations, lazy compilations
        for stroke in next(iter(sets.values()))[0]:
            s.add_stroke(stroke)
    ms: dict[str, list[float]] = {n: [] for n in names}
    enc: dict[str, list[float]] = {n: [] for n in names}
    out: dict[str, Outputs] = {}
    k = 0
    for label, sketches in sets.items():
        out[label] = {n: [] for n in names}
        for sk in sketches:
            for s in sessions.values():
                s.reset()
            for stroke in sk:
                for n in rotated(names, k):
                    res = sessions[n].add_stroke(stroke)
                    ms[n].append(res.timings["total"])
                    enc[n].append(res.timings["encode"])
                    out[label][n].append((res.feature, res.embedding))
                k += 1
                bar.update(1)
    return ms, enc, out


def _fidelity(per: Outputs, gm) -> dict:
    """One set's fidelity of every method against the onnxruntime fp32 outputs on the same prefixes."""
    from dcssa.calibration import fidelity as fd

    def stacked(n: str) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([f for f, _ in per[n]]), np.stack([e for _, e in per[n]])

    rf, re_ = stacked(REFERENCE_NAME)
    ref = fd.Reference(rf, re_, gm.topk(re_))
    top2 = -np.sort(-(re_ @ gm.embeddings.T), axis=1)[:, :2]
    clear = (top2[:, 0] - top2[:, 1]) >= MARGIN
    block: dict = {"prefixes": len(rf), "clear_top1_prefixes": int(clear.sum())}
    for n in per:
        if n == REFERENCE_NAME:
            continue
        f, e = stacked(n)
        rep = fd.compare(ref, f, e, gm)
        top = gm.topk(e)
        rep[f"top1_agreement_margin_{MARGIN}"] = float(np.mean(top[clear, 0] == ref.top[clear, 0])) if clear.any() else None
        block[n] = rep
    return block


def run_fastpath(bundle_path: Path, gallery_path: Path, folders: list[Path], *, methods=METHODS,
                 threads: int | None = None, progress: bool = True) -> dict:
    from dcssa.calibration import fidelity as fd

    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle)
    gm = fd.GalleryMatrix(np.asarray(gallery.embeddings, np.float32), list(gallery.ids), str(gallery_path))
    retrievers, skipped = _retrievers(bundle, gallery, methods, threads)
    sets = {_set_label(f): _load_sketches(Path(f)) for f in folders}
    total = sum(len(sk) for sketches in sets.values() for sk in sketches)
    with Progress(quiet=not progress).bar(total, "strokes", "stroke", leave=True) as bar:
        ms, enc, out = _replay(retrievers, sets, bar)
    base = float(np.median(ms[REFERENCE_NAME]))
    latency = {n: {"stroke_median_ms": float(np.median(ms[n])), "encode_median_ms": float(np.median(enc[n])),
                   "ratio_to_ort_fp32": float(np.median(ms[n]) / base), "strokes": len(ms[n])} for n in retrievers}
    return {
        "schema": "dcssa-openvino-fastpath/1",
        "env": {**environment(threads), "load_average": os.getloadavg()},
        "bundle": str(bundle_path),
        "gallery_size": len(gallery),
        "methods": list(retrievers),
        "skipped": skipped,
        "backends": {n: r.backend.describe() for n, r in retrievers.items()},
        "latency": latency,
        "fidelity": {label: _fidelity(per, gm) for label, per in out.items()},
    }


def markdown(rep: dict) -> str:
    sets = list(rep["fidelity"])
    head = ["method", "ms / stroke (median)", "encoder ms", "x ort fp32"]
    for s in sets:
        head += [f"{s}: cosine mean / min", f"{s}: top-1", f"{s}: top-10 overlap"]
    lines = [row(head), rule(len(head))]
    for n in rep["methods"]:
        lat = rep["latency"][n]
        cells = [n, f"{lat['stroke_median_ms']:.1f}", f"{lat['encode_median_ms']:.1f}", f"{lat['ratio_to_ort_fp32']:.2f}"]
        for s in sets:
            f = rep["fidelity"][s].get(n)
            if f is None:
                cells += ["reference", "-", "-"]
            else:
                c = f["embedding_cosine"]
                cells += [f"{c['mean']:.4f} / {c['min']:.4f}", f"{f['top1_agreement']:.1%}", f"{f['top10_overlap']:.1%}"]
        lines.append(row(cells))
    return "\n".join(lines) + "\n"


@click.command("openvino-fastpath")
@bundle_option()
@gallery_option
@click.option("--strokes", "folders", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Folder of strokes JSON tracings (repeatable: one fidelity block each).")
@threads_option()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the report JSON here.")
@output_options(json="the report")
def command(bundle: Path, gallery: Path, folders: tuple[Path, ...], threads: int | None, out: Path | None,
            as_json: bool, quiet: bool) -> None:
    """Per-stroke latency and fidelity of onnxruntime fp32 vs openvino fp32 / bf16 / int8."""
    t0 = time.time()
    with fail_cleanly():
        rep = run_fastpath(bundle, gallery, list(folders), threads=threads,
                           progress=not (quiet or as_json))
    rep["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        out.write_text(json.dumps(rep, indent=2) + "\n")
    click.echo(json.dumps(rep, indent=2) if as_json else markdown(rep))
    if not as_json:
        for n, why in rep["skipped"].items():
            click.echo(f"skipped {n}: {why}")
        click.echo(f"load average {rep['env']['load_average']}")


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.openvino_fastpath` is deprecated: use `dcssa-bench openvino-fastpath` (the same options)")
    command(prog_name="dcssa-bench openvino-fastpath")

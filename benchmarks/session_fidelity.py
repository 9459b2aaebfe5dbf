"""``dcssa-bench session-fidelity``: what keeping the stroke head's K/V rows in float16 (as sessions
now do, so that a session restored from the store is the live one) changes against float32 rows.

Each tracing (``strokes/*.json`` with a ``target``, as ``dcssa-rt make-dataset`` writes them) is
drawn in a live session; the same encoder features then go through the head with a float32 cache
(``CausalHead(cache_dtype=None)``), and both embeddings are searched in the gallery. Per stroke:
top-10 identical (ids and order), same top-10 set, same top-1, the target's rank under both, the
largest embedding difference. Writes session_fidelity.json and .md to --out. Measure it on the
structured demo (trained-like margins), not on random weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.env import cpu_model, isa
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.options import click_options, from_cli, setting

TOP = 10


@dataclass(frozen=True)
class FidelityOptions:
    """One run of the float16-cache fidelity check."""

    tracings: Path = setting(None, "Folder of tracings (*.json with a \"target\" gallery id), e.g. "
                                   "DATA/Shapes/strokes.",
                             type=click.Path(path_type=Path, exists=True, file_okay=False), show_default=False)
    out: Path = setting(Path("bench-out"), "Folder for session_fidelity.json/.md.",
                        type=click.Path(path_type=Path, file_okay=False))


def _rank(scores: np.ndarray, target: int) -> int:
    """1-based rank of ``target`` (ties counted against it)."""
    return int((scores >= scores[target]).sum())


def compare(retriever, strokes: list, target: int) -> list[dict]:
    """Per stroke of one tracing: the live (float16-cache) result beside the float32-cache head's."""
    from dcssa.runtime.stroke.head import CausalHead

    session = retriever.session()
    live = [session.add_stroke(s) for s in strokes]
    feats = np.stack([r.feature for r in live])
    exact = CausalHead.embed_sequence(retriever.head, feats, cache_dtype=None)
    g = retriever.gallery
    rows = []
    for res, emb in zip(live, exact):
        s16, s32 = g.scores(res.embedding), g.scores(emb)
        top16, top32 = np.argsort(-s16, kind="stable")[:TOP], np.argsort(-s32, kind="stable")[:TOP]
        rows.append({"identical": bool(np.array_equal(top16, top32)), "same_set": set(top16) == set(top32),
                     "same_top1": bool(top16[0] == top32[0]), "rank16": _rank(s16, target),
                     "rank32": _rank(s32, target), "max_abs_diff": float(np.abs(res.embedding - emb).max())})
    return rows


def summarise(rows: list[dict]) -> dict:
    r16, r32 = np.array([r["rank16"] for r in rows]), np.array([r["rank32"] for r in rows])
    return {"strokes": len(rows), "top10_identical": float(np.mean([r["identical"] for r in rows])),
            "top10_same_set": float(np.mean([r["same_set"] for r in rows])),
            "top1_same": float(np.mean([r["same_top1"] for r in rows])),
            "target_rank_equal": float(np.mean(r16 == r32)), "target_rank_max_change": int(np.abs(r16 - r32).max()),
            "acc1_fp16": float(np.mean(r16 == 1)), "acc1_fp32": float(np.mean(r32 == 1)),
            "acc10_fp16": float(np.mean(r16 <= TOP)), "acc10_fp32": float(np.mean(r32 <= TOP)),
            "mean_rank_fp16": float(r16.mean()), "mean_rank_fp32": float(r32.mean()),
            "max_abs_embedding_diff": max(r["max_abs_diff"] for r in rows)}


def run(retriever, tracings: Path) -> dict:
    from dcssa.runtime.stroke.parse import load_strokes_file

    files = sorted(Path(tracings).glob("*.json"))
    if not files:
        raise DcssaError("no *.json tracings", path=tracings, hint="point --tracings at DATA/Shapes/strokes")
    if retriever.head is None or not retriever.head.spec.state:
        raise DcssaError("the bundle has no stateful stroke head: it keeps no K/V rows to compare",
                         hint="use a phase-2 DC-SSA bundle")
    load0, rows = os.getloadavg(), []
    for f in files:
        target = json.loads(f.read_text()).get("target")
        if target not in retriever.gallery.ids:
            raise DcssaError(f"target {target!r} is not a gallery id", path=f, hint="use the gallery of its dataset")
        rows += compare(retriever, load_strokes_file(f), retriever.gallery.ids.index(target))
    return {"machine": {"cpu": cpu_model(), "isa": isa(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
            "tracings": len(files), "gallery": len(retriever.gallery), **summarise(rows)}


def markdown(rep: dict) -> str:
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    return "\n".join([
        f"# Sessions' float16 K/V rows against float32 ({rep['tracings']} tracings, {rep['strokes']} strokes, "
        f"{rep['gallery']} photos)", "",
        "| top-10 identical | same top-10 set | same top-1 | target rank equal | largest rank change | "
        "acc@1 fp16 / fp32 | acc@10 fp16 / fp32 | mean target rank fp16 / fp32 | max abs embedding diff |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {pct(rep['top10_identical'])} | {pct(rep['top10_same_set'])} | {pct(rep['top1_same'])} | "
        f"{pct(rep['target_rank_equal'])} | {rep['target_rank_max_change']} | {pct(rep['acc1_fp16'])} / "
        f"{pct(rep['acc1_fp32'])} | {pct(rep['acc10_fp16'])} / {pct(rep['acc10_fp32'])} | "
        f"{rep['mean_rank_fp16']:.2f} / {rep['mean_rank_fp32']:.2f} | {rep['max_abs_embedding_diff']:.2e} |", ""])


@click.command("session-fidelity")
@bundle_option()
@gallery_option
@click_options(FidelityOptions)
@output_options(json="the report", quiet=False)
def command(bundle: Path, gallery: Path, as_json: bool, **kwargs) -> None:
    """Top-10 and target ranks with the sessions' float16 K/V rows against a float32 cache."""
    options, _ = from_cli(FidelityOptions, kwargs)
    with fail_cleanly():
        from dcssa.runtime import Bundle, Gallery, Retriever

        if options.tracings is None:
            raise DcssaError("--tracings is required", hint="point it at DATA/Shapes/strokes")
        b = Bundle.load(bundle)
        rep = run(Retriever(b, Gallery.load(gallery, b), backend="ort-cpu", topk=TOP), options.tracings)
        options.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("session_fidelity.json", json.dumps(rep, indent=2) + "\n"),
                           ("session_fidelity.md", markdown(rep))):
            tmp = options.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, options.out / name)
    click.echo(json.dumps(rep, indent=2) if as_json else markdown(rep))

"""bench.md from the bench.json report dict: text only, so it can be re-rendered from a saved report."""

from __future__ import annotations

from collections.abc import Iterable

from dcssa.runtime.session import PHASES

#: the strokes whose latency the per-stroke table shows (those the sketch has)
TABLE_STROKES = (1, 5, 10, 15, 20)


def row(cells: Iterable[object]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def rule(columns: int) -> str:
    """The header separator of a ``columns``-wide table."""
    return row(["---"] * columns)


def faster(x: float, than: str) -> str:
    return f"{x:.2f}x faster than {than}" if x >= 1 else f"{1 / x:.2f}x SLOWER than {than}"


def summary_line(name: str, ratios: dict, strokes: int, best: str | None = None) -> str:
    """One runtime method's speed-ups in words, as bench.md and bench.json's ``summary`` state them.

    Against the best PyTorch peer ``best`` when one was measured (``ratios["vs best peer"]``), else
    against torch-eager; then against naive.
    """
    parts = []
    if best and name in ratios.get("vs best peer", {}):
        parts.append(faster(ratios["vs best peer"][name]["whole_sketch"], f"the best PyTorch peer ({best})")
                     + " over the whole sketch")
    elif name in ratios.get("vs torch-eager", {}):
        parts.append(faster(ratios["vs torch-eager"][name]["whole_sketch"], "torch-eager") + " over the whole sketch")
    if name in ratios.get("vs naive", {}):
        r = ratios["vs naive"][name]
        last = f"stroke_{strokes}" if f"stroke_{strokes}" in r else "whole_sketch"
        parts.append(faster(r[last], "naive") + f" at {last.replace('_', ' ')}, "
                     + faster(r["whole_sketch"], "naive") + " over the sketch")
    return f"{name}: " + ("; ".join(parts) if parts else "no PyTorch baseline measured")


def _header(rep: dict) -> list[str]:
    env, cfg = rep["env"], rep["config"]
    return [
        "# dcssa-rt benchmark",
        "",
        f"Machine: {env['cpu']} ({env.get('isa') or 'no AVX-512'}), {env['cores']} cores, "
        f"{env['threads']} threads (torch: {env.get('torch_threads')}); GPU: {env['gpu'] or 'none'}. "
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, torch {env['torch']}, "
        f"openvino {env['openvino']}, TensorRT {env['tensorrt']}, FAISS {env.get('faiss')}. "
        f"Load average (1 min) {env.get('load_average_before')} before, {env.get('load_average_after')} after.",
        f"Sketch: {cfg['sketch']}, {cfg['strokes']} strokes, {cfg['repeats']} repeats (medians), "
        f"gallery of {cfg['gallery_size']} photos{' (DEMO bundle)' if cfg['demo'] else ''}.",
        "",
        *[f"- {line}" for line in rep.get("summary", [])],
    ]


def _latency_table(rep: dict) -> list[str]:
    picks = [s for s in TABLE_STROKES if s <= rep["config"]["strokes"]]
    lines = ["## Per-stroke latency (ms, median [p90])", "",
             row(["method", *[f"stroke {s}" for s in picks], "whole sketch"]), rule(len(picks) + 2)]
    for name, v in rep["per_stroke"].items():
        cells = [f"{v['median_ms'][s - 1]:.1f} [{v['p90_ms'][s - 1]:.1f}]" for s in picks]
        lines.append(row([name, *cells, f"{v['total_median_ms']:.0f}"]))
    lines += [f"\n- `{name}` skipped: {why}" for name, why in rep["skipped"].items()]
    return lines


def _peer_table(rep: dict) -> list[str]:
    """The PyTorch peers: what each runs, its first call (torch-compile: the compile) apart from the
    per-stroke medians, and how its outputs compare with torch-eager's."""
    peers = rep.get("torch_peers") or {}
    if not peers:
        return []
    best = (rep.get("best_torch_peer") or {}).get("method")
    lines = ["", "## PyTorch peers", "",
             row(["peer", "setup", "first call ms (compile included)", "whole sketch ms",
                  "vs torch-eager: max abs embedding diff", "top-1 same", "top-10 overlap"]), rule(7)]
    for name, p in peers.items():
        same = p.get("vs_torch_eager")
        cmp = [f"{same['max_abs_embedding_diff']:.2e}", f"{same['top1_same']:.0%}", f"{same['top10_overlap']:.0%}"] \
            if same else ["(reference)", "", ""]
        total = rep["per_stroke"].get(name, {}).get("total_median_ms")
        label = f"**{name}** (best)" if name == best else name
        lines.append(row([label, p["setup"], f"{p['first_call_ms']:.0f}", f"{total:.0f}" if total else "n/a", *cmp]))
    if best:
        lines += ["", f"Best PyTorch peer: **{best}** ({rep['best_torch_peer']['total_median_ms']:.0f} ms over the "
                  "whole sketch, median; its first call / compile is not counted in it). The runtime's speed-ups "
                  "against it are the \"vs best peer\" table."]
    absent = {n: why for n, why in rep["skipped"].items() if n.startswith("torch-")}
    lines += [f"- `{n}` left out: {why}" for n, why in absent.items()]
    return lines


def _ratio_tables(rep: dict) -> list[str]:
    lines: list[str] = []
    best = (rep.get("best_torch_peer") or {}).get("method")
    for base, table in rep["ratios"].items():
        cols = list(next(iter(table.values())).keys()) if table else []
        title = f"vs best peer ({best})" if base == "vs best peer" and best else base
        lines += ["", f"## Speed-up {title} (x, higher is better)", "", row(["method", *cols]), rule(len(cols) + 1)]
        lines += [row([name, *[f"{r[c]:.2f}" for c in cols]]) for name, r in table.items()]
    return lines


def _phase_table(rep: dict) -> list[str]:
    if not rep["phases"]:
        return []
    cols = [*PHASES, "total"]
    lines = ["", "## Runtime phases (ms, median over all strokes)", "",
             row(["method", *cols, "undo", "restart: load + first stroke", "peak RSS MB"]), rule(len(cols) + 4)]
    for name, ph in rep["phases"].items():
        rss = rep["peak_rss_mb"].get(name)
        cold = rep["cold_first_stroke_ms"][name]
        lines.append(row([name, *[f"{ph[c]:.2f}" for c in cols], f"{rep['undo_ms'][name]:.3f}",
                          f"{cold['load']:.0f} + {cold['first_stroke']:.0f}", f"{rss:.0f}" if rss else "n/a"]))
    return lines + ["", "Peak RSS: a fresh process (no torch) serving one session of the sketch. Restart: bundle "
                    "hash checks, gallery and graph loading with compiled-model caches warm, then the first stroke."]


def _search_table(rep: dict) -> list[str]:
    if not rep["search"]:
        return []
    has_faiss = "faiss_flat_ip_ms" in rep["search"][0]
    faiss_cols = ["FAISS IndexFlatIP", "FAISS, 1 thread", "same top-10"] if has_faiss else []
    lines = ["", "## Gallery search (top-10, ms, median)", "",
             row(["photos", "dcssa-rt exact", *faiss_cols]), rule(2 + len(faiss_cols))]
    for r in rep["search"]:
        extra = [f"{r['faiss_flat_ip_ms']:.3f}", f"{r['faiss_flat_ip_1thread_ms']:.3f}",
                 r["same_topk_as_faiss"]] if has_faiss else []
        lines.append(row([f"{r['size']:,}", f"{r['ours_ms']:.3f}", *extra]))
    if not has_faiss:
        lines.append("\nFAISS not installed (`pip install faiss-cpu` to compare).")
    return lines


def markdown(rep: dict) -> str:
    """The whole bench.md."""
    lines = [*_header(rep), "", *_latency_table(rep), *_peer_table(rep), *_ratio_tables(rep), *_phase_table(rep),
             *_search_table(rep),
             *_index_table(rep)]
    return "\n".join(lines) + "\n"


def _index_table(rep: dict) -> list[str]:
    """FAISS indexes against the exact search (`--index-sizes`), the table of search_scaling's script."""
    if not rep.get("indexes"):
        return []
    from dcssa.benchmarks.search_scaling import indexes_markdown

    table = indexes_markdown({"env": rep["env"], "rows": rep["indexes"],
                              "config": {"queries": 500, "latency_queries": 300, "target_recall": 0.95}})
    return ["", "## " + table.lstrip("# ")]

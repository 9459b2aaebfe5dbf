"""The two bench PNGs from the bench.json report dict.

Drawn on bare Agg figures, never through pyplot, so a library call leaves matplotlib's global
backend and figure registry as it found them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcssa.runtime.plotting import agg_figure

LATENCY_PNG = "latency_per_stroke.png"
SEARCH_PNG = "search_scaling.png"
DPI = 120


def figure(size: tuple[float, float]):
    """One Agg figure and its axes (matplotlib: the ``bench`` extra)."""
    fig = agg_figure(size, "the benchmark plots", layout="tight")
    return fig, fig.subplots()


def _finish(ax, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_latency(rep: dict, path: Path) -> None:
    """Per-stroke median latency of every method, log scale, with a band up to p90."""
    from matplotlib.ticker import MaxNLocator

    env = rep["env"]
    best = (rep.get("best_torch_peer") or {}).get("method")
    fig, ax = figure((7.5, 4.8))
    for name, v in rep["per_stroke"].items():
        x = np.arange(1, len(v["median_ms"]) + 1)
        (line,) = ax.plot(x, v["median_ms"], marker="o", ms=3, label=_label(rep, name, best),
                          lw=2.5 if name == best else 1.5)
        ax.fill_between(x, v["median_ms"], v["p90_ms"], color=line.get_color(), alpha=0.12, lw=0)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("stroke index (the sketch so far has this many strokes)")
    ax.set_ylabel("ms per stroke: median, band to p90")
    _finish(ax, f"Per-stroke latency, {env['cpu']}, {env['cores']} cores, {env['threads']} threads, "
                f"GPU: {env['gpu'] or 'none'}")
    fig.savefig(path, dpi=DPI)


def _label(rep: dict, name: str, best: str | None) -> str:
    """Legend entry: the best PyTorch peer is named so; torch-compile's compile time is shown apart."""
    label = f"{name} (best PyTorch peer)" if name == best else name
    first = (rep.get("torch_peers") or {}).get(name, {}).get("first_call_ms")
    if name == "torch-compile" and first is not None:
        label += f" [compile: {first / 1e3:.0f} s, not plotted]"
    return label


def plot_search(rep: dict, path: Path) -> None:
    """Exact top-10 search time against gallery size: ours, and FAISS when it was measured."""
    rows = rep["search"]
    fig, ax = figure((6, 4))
    sizes = [r["size"] for r in rows]
    ax.plot(sizes, [r["ours_ms"] for r in rows], marker="o", label="dcssa-rt exact (numpy)")
    if "faiss_flat_ip_ms" in rows[0]:
        ax.plot(sizes, [r["faiss_flat_ip_ms"] for r in rows], marker="s", label="FAISS IndexFlatIP")
        ax.plot(sizes, [r["faiss_flat_ip_1thread_ms"] for r in rows], marker="^", label="FAISS IndexFlatIP, 1 thread")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size (photos, random unit vectors)")
    ax.set_ylabel("ms per top-10 query (median)")
    _finish(ax, f"Exact gallery search, dim {rows[0]['dim']}, {rep['env']['cpu']}")
    fig.savefig(path, dpi=DPI)


def plots(rep: dict, folder: Path) -> list[str]:
    """Write the plots into ``folder``; returns the file names written (no search section, no search plot)."""
    plot_latency(rep, Path(folder) / LATENCY_PNG)
    if not rep["search"]:
        return [LATENCY_PNG]
    plot_search(rep, Path(folder) / SEARCH_PNG)
    return [LATENCY_PNG, SEARCH_PNG]

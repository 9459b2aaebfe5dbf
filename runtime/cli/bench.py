"""``dcssa-rt bench``: the per-stroke benchmark of the Performance page (PyTorch peers, phases, search scaling)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..progress import Progress
from .console import fail_cleanly
from .options import bundle_option, gallery_option, output_options, runtime_options

#: ``dcssa-rt bench --peers`` (benchmarks/stroke_latency.PEERS; not imported here: it loads the runtime)
BENCH_PEERS = ("eager", "channels-last", "bf16", "compile")


def _peer_list(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    wrong = [p for p in names if p not in BENCH_PEERS]
    if wrong:
        raise click.BadParameter(f"{', '.join(wrong)}: choose from {', '.join(BENCH_PEERS)}")
    return names


@click.command()
@bundle_option()
@gallery_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--strokes", "strokes_file", type=click.Path(path_type=Path), default=None,
              help="Strokes JSON to replay [default: a generated 20-stroke sketch].")
@click.option("--max-strokes", type=click.IntRange(1), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
@runtime_options(multiple=True)
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="The checkpoint the bundle was exported from, for the PyTorch baselines (needs [export]) "
                   "[default: the file the manifest names, if it lies beside the bundle with the recorded sha256].")
@click.option("--search-sizes", default="1000,10000,100000,1000000", show_default=True,
              help="Gallery sizes for the search-scaling section ('' to skip).")
@click.option("--index-sizes", default="", show_default=True,
              help="Sizes for the FAISS index section (flat, hnsw, ivf, ivfpq against exact; needs [faiss]; '' to skip).")
@click.option("--peers", default=",".join(BENCH_PEERS), show_default=True, callback=_peer_list,
              help="PyTorch peers to measure beside naive (methods torch-PEER), comma-separated; those the CPU "
                   "cannot run (bf16 without native bf16, compile without a C++ compiler) are left out with the "
                   "reason; '' for none.")
@output_options(json="bench.json", force="output folder")
def bench(bundle: Path, gallery: Path, out: Path, strokes_file: Path | None, max_strokes: int, repeats: int,
          backends: tuple[str, ...], precisions: tuple[str, ...], threads: int | None, ckpt: Path | None,
          search_sizes: str, index_sizes: str, peers: tuple[str, ...], as_json: bool, quiet: bool,
          force: bool) -> None:
    """Measure per-stroke latency (naive, the PyTorch peers, runtime), phases, undo, cold start, memory
    and search scaling; writes OUT/bench.json, bench.md, latency_per_stroke.png, search_scaling.png."""
    from dcssa.benchmarks.run import run_bench

    sizes = tuple(int(x) for x in search_sizes.split(",") if x.strip())
    isizes = tuple(int(x) for x in index_sizes.split(",") if x.strip())
    with fail_cleanly():
        rep = run_bench(bundle, gallery, out, strokes_file=strokes_file, strokes=max_strokes,
                        repeats=repeats, backends=list(backends) or None, precisions=list(precisions) or None,
                        ckpt=ckpt, threads=threads, search_sizes=sizes, index_sizes=isizes, peers=peers, force=force,
                        say=Progress(quiet or as_json))
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo((out / "bench.md").read_text())

"""``dcssa-rt index``: a photo folder -> a gallery (and optionally a FAISS index), locally or on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..indexing.options import IndexOptions
from ..options import click_options, from_cli
from ..progress import Progress
from .console import fail_cleanly, warn
from .options import bundle_option, default_gallery, output_options, runtime_options


@click.command()
@click.argument("photos", type=click.Path(path_type=Path))
@bundle_option()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Gallery folder [default: BUNDLE/gallery].")
@click_options(IndexOptions, only=["batch_size"])
@runtime_options(precision=False)
@click_options(IndexOptions, exclude=["batch_size", "force"])
@output_options(json="the gallery metadata")
@click_options(IndexOptions, only=["force"])
def index(photos: Path, bundle: Path, out: Path | None, backend: str, as_json: bool, quiet: bool, **settings) -> None:
    """Embed every image under PHOTOS (recursively) into a gallery for `query`, optionally with a FAISS index."""
    from ..contract.bundle import Bundle
    from ..indexing.build import build_gallery

    out = out if out is not None else default_gallery(bundle)
    with fail_cleanly():
        options, _ = from_cli(IndexOptions, settings)  # settings holds --threads too: the photo encoder's
        g = build_gallery(photos, Bundle.load(bundle), out, options, backend=backend, report=Progress(quiet or as_json))
    ix = g.meta.get("index")
    objective = (ix or {}).get("objective", "recall_at_10")
    if ix and ix[objective] < ix["target_recall"]:
        what = "keeps the drawn photo in its top 10 for" if objective == "target_kept" else "reaches recall@10"
        warn(f"the {ix['type']} index {what} {ix[objective]:.4f} only (target {ix['target_recall']}): "
             "its results will differ from the exact search; use more IVF cells probed / PQ bytes (--nprobe, --m, "
             "--refine), or --index hnsw / flat")
    if as_json:
        click.echo(json.dumps({"path": str(out), **g.meta}, indent=2))
    else:
        skipped = len(g.meta["skipped"])
        click.echo(f"gallery written: {out} ({len(g)} photos, dim {g.dim}, {skipped} skipped)")
        if g.meta.get("index"):
            click.echo(f"  {index_summary(g.meta['index'])}")


def index_summary(ix: dict) -> str:
    params = ", ".join(f"{k} {v}" for k, v in ix.get("search_params", {}).items())
    shards = f", {ix['shards']} shards" if ix.get("shards", 1) > 1 else ""
    shards += f", re-ranking {ix['refine']} x k exactly" if ix.get("refine") else ""
    kept = f" (target photo kept in the top 10: {ix['target_kept']:.4f})" if "target_kept" in ix else ""
    return (f"index {ix['type']} ({ix['factory']}{shards}): recall@10 {ix['recall_at_10']:.4f}{kept} vs exact search "
            f"on {ix['recall_queries']} held-out queries{' at ' + params if params else ''}; "
            f"{ix['bytes'] / 2**20:.1f} MiB, built in {ix['build_s']:.1f} s")

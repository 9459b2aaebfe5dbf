"""``dcssa-rt index``: a photo folder -> a gallery (and optionally a FAISS index), locally or on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..progress import Progress
from .console import fail_cleanly, warn
from .options import bundle_option, default_gallery, output_options, runtime_options


@click.command()
@click.argument("photos", type=click.Path(path_type=Path))
@bundle_option()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Gallery folder [default: BUNDLE/gallery].")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@runtime_options(precision=False)
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--fp16-storage", is_flag=True, help="Store embeddings as float16 (half the memory).")
@click.option("--index", "index_type", default=None, metavar="TYPE",
              help="exact (numpy, the default), flat, hnsw, ivf, ivfpq, or a FAISS index_factory string "
                   "(needs the [faiss] extra). Recall@10 against the exact search is measured and recorded.")
@click.option("--nlist", type=int, default=None, help="IVF cells [default: about 4 sqrt(N)].")
@click.option("--m", "m", type=int, default=None, help="hnsw: links per node [32]; ivfpq: PQ sub-quantizers [dim/4].")
@click.option("--nprobe", type=int, default=None, help="IVF cells searched [default: tuned to --target-recall].")
@click.option("--ef", type=int, default=None, help="HNSW efSearch [default: tuned to --target-recall].")
@click.option("--target-recall", type=float, default=0.95, show_default=True,
              help="Recall@10 the tuned search parameter must reach on held-out queries.")
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True,
              help="Write the FAISS index in this many parts (loaded together as IndexShards).")
@click.option("--append", is_flag=True,
              help="Update the gallery at --out: embed only new files, drop removed ones, keep every other id.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Embed on Ray (needs the [ray] extra): a local instance, or ADDRESS (auto, ray://host:10001).")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="Photo-encoder actors on Ray [default: one per CPU of the cluster].")
@output_options(json="the gallery metadata", force="gallery")
def index(photos: Path, bundle: Path, out: Path | None, batch_size: int, backend: str, threads: int | None,
          strict: bool, fp16_storage: bool, index_type: str | None, nlist: int | None, m: int | None,
          nprobe: int | None, ef: int | None, target_recall: float, shards: int, append: bool,
          ray_address: str | None, ray_actors: int | None, as_json: bool, quiet: bool, force: bool) -> None:
    """Embed every image under PHOTOS (recursively) into a gallery for `query`, optionally with a FAISS index."""
    from ..backends import get_backend
    from ..contract.bundle import Bundle
    from ..indexing.build import build_gallery

    out = out if out is not None else default_gallery(bundle)
    say = Progress(quiet or as_json)
    with fail_cleanly():
        spec = None
        knobs = {"nlist": nlist, "m": m, "nprobe": nprobe, "ef": ef}
        if index_type is not None:
            from ..indexing.faiss_build import IndexSpec

            spec = IndexSpec.parse(index_type, target_recall=target_recall, **knobs)
            if spec.kind != "exact":
                from ..search.faiss_index import faiss_module

                faiss_module()  # a missing FAISS is reported before minutes of embedding
        elif any(v is not None for v in knobs.values()) or shards > 1:
            raise click.UsageError("--nlist/--m/--nprobe/--ef/--shards need --index")
        if append and force:
            raise click.UsageError("--append updates the gallery in place; --force would rebuild it: pick one")
        b = Bundle.load(bundle)
        embedder = None
        if ray_address is not None:
            from ..indexing.ray_embed import default_shard_folder, ray_embedder

            embedder = ray_embedder(b, address=ray_address, actors=ray_actors, batch_size=batch_size,
                                    strict=strict, threads=threads, backend=backend, shards=default_shard_folder(out), say=say)
        g = build_gallery(
            photos, b, out, backend=get_backend(backend, threads=threads), batch_size=batch_size,
            strict=strict, float16=fp16_storage, force=force, progress=not (quiet or as_json), warn=warn,
            index=spec, shards=shards, append=append, embedder=embedder, say=say,
        )
    ix = g.meta.get("index")
    if ix and ix["recall_at_10"] < ix["target_recall"]:
        warn(f"the {ix['type']} index reaches recall@10 {ix['recall_at_10']:.4f} only (target {ix['target_recall']}): "
             "its results will differ from the exact search; use more IVF cells probed / PQ bytes (--nprobe, --m), "
             "or --index hnsw / flat")
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
    return (f"index {ix['type']} ({ix['factory']}{shards}): recall@10 {ix['recall_at_10']:.4f} vs exact search "
            f"on {ix['recall_queries']} held-out queries{' at ' + params if params else ''}; "
            f"{ix['bytes'] / 2**20:.1f} MiB, built in {ix['build_s']:.1f} s")

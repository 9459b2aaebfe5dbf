"""The settings of the indexing job, each with its one default and help: ``dcssa-rt index`` generates
its options from :class:`IndexOptions`, and :func:`~dcssa.runtime.indexing.build.build_gallery` takes one.

Light on purpose (click and the options machinery only): the CLI imports it to register the command.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from ..options import OptionsError, setting

#: what ``--ray`` alone means: start a Ray instance here
LOCAL_RAY = "local"

#: the parameters that mean something only for a FAISS index (besides ``--shards``)
INDEX_PARAMS = ("nlist", "m", "nprobe", "ef", "refine")


@dataclass(frozen=True)
class IndexOptions:
    """How to build (or update) a gallery. Checked when made: a FAISS parameter without ``index``, or
    ``append`` with ``force``, is refused before any photo is read."""

    batch_size: int = setting(8, "Photos per photo-encoder call.", type=click.IntRange(1))
    strict: bool = setting(False, "Fail on an unreadable image instead of skipping it.", is_flag=True)
    fp16_storage: bool = setting(False, "Store embeddings as float16 (half the memory).", is_flag=True)
    index: str | None = setting(
        None, "exact (numpy, the default), flat, hnsw, hnsw-sq8, hnsw-fp16, ivf, ivf-sq8, ivfpq, opq, or a FAISS "
        "index_factory string (needs the [faiss] extra). Recall@10 against the exact search is measured and "
        "recorded.", metavar="TYPE")
    nlist: int | None = setting(None, "IVF cells [default: about 4 sqrt(N)].", type=int)
    m: int | None = setting(None, "hnsw*: links per node [32]; ivfpq/opq: PQ sub-quantizers [dim/4].", type=int)
    nprobe: int | None = setting(None, "IVF cells searched [default: tuned to --target-recall].", type=int)
    ef: int | None = setting(None, "HNSW efSearch [default: tuned to --target-recall].", type=int)
    refine: int | None = setting(None, "ivfpq/opq/ivf-sq8/hnsw-sq8/hnsw-fp16: re-rank REFINE x 10 "
                                 "candidates exactly from the gallery's memory-mapped embeddings "
                                 "[default: no re-ranking].", type=int)
    target_recall: float = setting(0.95, "Recall@10 the tuned search parameter must reach on held-out queries (with "
                                   "partial-sketch queries: the share of sketches whose photo the exact top 10 holds "
                                   "that the index's top 10 keeps).", type=float)
    shards: int = setting(1, "Write the FAISS index in this many parts (loaded together as IndexShards).",
                          type=click.IntRange(1))
    append: bool = setting(False, "Update the gallery at --out: embed only new files, drop removed ones, keep every "
                           "other id.", is_flag=True)
    ray_address: str | None = setting(
        None, "Embed on Ray (needs the [ray] extra): a local instance, or ADDRESS (auto, ray://host:10001).",
        flag="--ray", metavar="[ADDRESS]", flag_value=LOCAL_RAY)
    ray_actors: int | None = setting(None, "Photo-encoder actors on Ray [default: one per CPU of the cluster].",
                                     type=click.IntRange(1))
    force: bool = setting(False, "Replace an existing gallery.", is_flag=True)
    #: the CLI's shared --threads: intra-op threads of the photo encoder here (each Ray actor: one unless given)
    threads: int | None = setting(None, "Intra-op threads of the photo encoder.", cli=False)

    def __post_init__(self) -> None:
        if self.index is None and (any(getattr(self, p) is not None for p in INDEX_PARAMS) or self.shards > 1):
            raise OptionsError("--nlist/--m/--nprobe/--ef/--refine/--shards need --index")
        if self.append and self.force:
            raise OptionsError("--append updates the gallery in place; --force would rebuild it: pick one")

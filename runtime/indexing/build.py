"""The indexing job: a photo folder -> a gallery folder (the matrix, stable labels, an optional FAISS
index with measured recall), built anew or updated in place with ``append``; written atomically.

The photos go one way through it: plan (which files, which rows stay) -> embed -> the rows the gallery
will hold -> recall queries -> write the matrix, the index and gallery.json in a staged folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import staged_dir
from ..backends import Backend, get_backend
from ..compat import REMOVED_IN
from ..contract.bundle import Bundle
from ..errors import GalleryError
from ..progress import SILENT, Callbacks, Reporter, silent
from ..search.gallery import EMBEDDINGS, GALLERY_META, IDS, LABELS, ROW_CHUNK, Gallery
from .embed import Embedder, local_embedder
from .faiss_build import IndexSpec
from .options import IndexOptions
from .plan import Plan, gallery_to_update, plan_run

if TYPE_CHECKING:  # FAISS is optional: imported by the functions that build or read an index
    from ..search.faiss_index import FaissIndex


def build_gallery(photos: str | Path, bundle: Bundle, out: str | Path, options: IndexOptions | None = None, *,
                  backend: Backend | str | None = None, embedder: Embedder | None = None,
                  report: Reporter = SILENT, **old_keywords: Any) -> Gallery:
    """Embed every image under ``photos``; the gallery appears at ``out`` only when complete.

    ``options.index``: also build a FAISS index (recall measured against the exact search, recorded
    in gallery.json). ``options.append``: update the gallery at ``out``: embed only files it does not
    hold, drop the ones no longer under ``photos``, keep every other photo's label (and its index's).
    ``backend``: a Backend, or a name resolved here and by each Ray actor on its node [ort-cpu];
    ``embedder``: embeds the photos instead of ``backend`` (see :mod:`.ray_embed`). The keywords of
    0.1 (``batch_size=``, ``progress=``, ``index=IndexSpec``...) still work, with a DeprecationWarning.
    """
    options, report = _old_keywords(options or IndexOptions(), report, old_keywords)
    photos, out = Path(photos), Path(out)
    spec = IndexSpec.from_options(options)
    if spec is not None and spec.builds_index:
        from ..search.faiss_index import faiss_module

        faiss_module()  # a missing FAISS is reported before minutes of embedding
    engine = backend if isinstance(backend, Backend) else get_backend(backend or "ort-cpu", threads=options.threads)
    embed = embedder or _embedder(bundle, out, options, engine, backend, report)
    plan = plan_run(photos, gallery_to_update(photos, bundle, out, options, spec))
    if plan.old is not None:
        report(f"append: {len(plan.new)} new photos, {len(plan.removed)} removed, {len(plan.keep_rows)} kept")
    rows = _rows(plan, *_embed(plan, embed, report), fp16=options.fp16_storage)
    queries = _recall_queries(plan, spec, bundle, engine, report)
    _write(out, plan, rows, bundle, options, spec, queries, report)
    discard = getattr(embed, "discard_shards", None)  # an embedder's intermediate files (Ray's shards) go now
    if discard is not None:
        discard()
    return Gallery.load(out, bundle)


def _embedder(bundle: Bundle, out: Path, options: IndexOptions, engine: Backend, backend: Backend | str | None,
              report: Reporter) -> Embedder:
    """In process on ``engine``, or on Ray (``options.ray_address``), whose actors resolve ``backend``'s
    name on their own node (``auto`` picks each node's best)."""
    if options.ray_address is None:
        return local_embedder(bundle, engine, batch_size=options.batch_size, strict=options.strict)
    from .ray_embed import default_shard_folder, ray_embedder

    name = backend if isinstance(backend, str) else engine.name
    return ray_embedder(bundle, address=options.ray_address, actors=options.ray_actors, batch_size=options.batch_size,
                        strict=options.strict, threads=options.threads, backend=name,
                        shards=default_shard_folder(out), say=report)


def _embed(plan: Plan, embed: Embedder, report: Reporter) -> tuple[dict[int, np.ndarray], list[str]]:
    """The new photos' embeddings (by index into ``plan.new``) and the files skipped as unreadable."""
    skipped: list[str] = []
    with report.bar(len(plan.new), "embedding photos", "photo", leave=True) as bar:

        def skip(path: Path, exc: Exception) -> None:
            report.warn(f"skipping unreadable image {path}: {exc}")
            skipped.append(str(path.relative_to(plan.photos)))
            bar.update(1)

        embedded = embed(plan.new, skip, bar.update) if plan.new else {}
    if not embedded and (plan.old is None or not len(plan.keep_rows)):
        raise GalleryError("no readable images", path=plan.photos)
    return embedded, skipped


@dataclass
class _Rows:
    """What the gallery will hold: the kept rows of ``plan.old`` then ``new`` (embedded now), their ids and labels."""

    new: np.ndarray
    ids: list[str]
    labels: np.ndarray
    skipped: list[str]
    dtype: Any


def _rows(plan: Plan, embedded: dict[int, np.ndarray], skipped: list[str], *, fp16: bool) -> _Rows:
    """New photos in file order after the kept ones; kept photos keep their labels, new ones get unused
    labels; an updated matrix keeps its dtype."""
    old = plan.old
    order = sorted(embedded)
    dim = old.dim if old is not None else len(next(iter(embedded.values())))
    new = np.stack([embedded[i] for i in order]) if order else np.zeros((0, dim), np.float32)
    new_ids = [plan.photo_id(plan.new[i]) for i in order]
    if old is None:
        dtype = np.float16 if fp16 else np.float32
        return _Rows(new, new_ids, np.arange(len(new_ids), dtype=np.int64), skipped, dtype)
    start = int(old.meta.get("next_label", int(old.labels[-1]) + 1 if len(old.labels) else 0))
    labels = np.concatenate([old.labels[plan.keep_rows], np.arange(start, start + len(new_ids), dtype=np.int64)])
    return _Rows(new, [old.ids[r] for r in plan.keep_rows] + new_ids, labels, skipped, old.embeddings.dtype)


def _indexed(plan: Plan, spec: IndexSpec | None) -> bool:
    """Whether the gallery gets a FAISS index: the one it is appended to had one, or ``spec`` asks for one."""
    return bool(plan.old_index) or (spec is not None and spec.builds_index)


def _recall_queries(plan: Plan, spec: IndexSpec | None, bundle: Bundle, engine: Backend, report: Reporter) -> dict:
    """The queries an index is measured on: partial sketches when tracings lie beside the photos
    (:mod:`.queries`); none (photo-derived ones) otherwise, or without an index."""
    if not _indexed(plan, spec):
        return {}
    from .queries import targeted_sketch_queries

    found = targeted_sketch_queries(plan.photos, bundle, engine, report=report)
    return {} if found is None else {"queries": found[0], "query_source": found[1], "target_names": found[2]}


def _target_labels(queries: dict, ids: list[str], labels: np.ndarray) -> dict:
    """``queries`` with its target photo names turned into labels (targets: only when every one is found)."""
    names = queries.get("target_names")
    out = {k: v for k, v in queries.items() if k != "target_names"}
    if names:
        by_stem = {Path(i).stem: lab for i, lab in zip(ids, labels)}
        if all(n in by_stem for n in names):
            out["targets"] = np.array([by_stem[n] for n in names], np.int64)
    return out


def _write(out: Path, plan: Plan, rows: _Rows, bundle: Bundle, options: IndexOptions, spec: IndexSpec | None,
           queries: dict, report: Reporter) -> None:
    """The gallery folder, staged then moved into place: matrix, labels, ids, index, gallery.json last."""
    with staged_dir(out, force=options.force or options.append) as tmp:
        emb = _write_matrix(tmp / EMBEDDINGS, plan, rows.new, rows.dtype)
        np.save(tmp / LABELS, rows.labels)
        (tmp / IDS).write_text(json.dumps(rows.ids, indent=0) + "\n")
        meta = _gallery_meta(bundle, emb, rows, plan)
        fi = _index(plan, emb, rows.labels, spec, options.shards, _target_labels(queries, rows.ids, rows.labels), report)
        if fi is not None:
            files = fi.save(tmp)
            meta["index"] = {**fi.info, "files": files, "bytes": sum((tmp / f).stat().st_size for f in files)}
        del emb
        (tmp / GALLERY_META).write_text(json.dumps(meta, indent=2) + "\n")


def _write_matrix(path: Path, plan: Plan, new_emb: np.ndarray, dtype) -> np.ndarray:
    """embeddings.npy: the kept old rows (copied in chunks), then the new ones; returns it memory-mapped."""
    dim = new_emb.shape[1] if plan.old is None else plan.old.dim
    count = len(plan.keep_rows) + len(new_emb)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))
    at = 0
    for i in range(0, len(plan.keep_rows), ROW_CHUNK):
        rows = plan.keep_rows[i : i + ROW_CHUNK]
        out[at : at + len(rows)] = plan.old.embeddings[rows]
        at += len(rows)
    if len(new_emb):
        out[at:] = new_emb.astype(dtype)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _gallery_meta(bundle: Bundle, emb: np.ndarray, rows: _Rows, plan: Plan) -> dict:
    meta = {
        "photo_encoder_sha256": bundle.photo_encoder_id(),
        "bundle_created": bundle.manifest.get("created"),
        "demo": bundle.demo,
        "count": len(rows.ids),
        "dim": int(emb.shape[1]),
        "dtype": str(emb.dtype),
        "photos_root": str(plan.photos.resolve()),
        "skipped": rows.skipped,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "next_label": int(rows.labels[-1]) + 1 if len(rows.labels) else 0,
    }
    if plan.old is not None:
        meta["appended_from"] = plan.old.meta.get("created")
    return meta


def _index(plan: Plan, emb: np.ndarray, labels: np.ndarray, spec: IndexSpec | None, shards: int, queries: dict,
           report: Reporter) -> FaissIndex | None:
    """The updated index of the gallery being appended to, a new one (``spec``), or None (exact search)."""
    if not _indexed(plan, spec):
        return None
    from .faiss_build import build_index, update_index

    with report.bar(len(labels), "indexing", "photo", leave=False) as bar:
        if plan.old_index:
            return update_index(plan.old.path, plan.old_index, emb, labels, kept=len(plan.keep_rows),
                                removed=plan.removed, say=report, bar=bar.update, **queries)
        return build_index(emb, labels, spec, shards=shards, say=report, bar=bar.update, **queries)


#: build_gallery's keywords of 0.1 that became settings of IndexOptions (the others: index, progress, warn, say)
_OLD_SETTINGS = {"batch_size": "batch_size", "strict": "strict", "float16": "fp16_storage", "force": "force",
                 "shards": "shards", "append": "append"}


def _old_keywords(options: IndexOptions, report: Reporter, old: dict[str, Any]) -> tuple[IndexOptions, Reporter]:
    """The keywords of 0.1 mapped onto the options and a reporter (deprecated, removed in 0.3)."""
    if not old:
        return options, report
    unknown = sorted(set(old) - set(_OLD_SETTINGS) - {"index", "progress", "warn", "say"})
    if unknown:
        raise TypeError(f"build_gallery() got unexpected keyword arguments {unknown}")
    warnings.warn(f"build_gallery({', '.join(f'{k}=' for k in old)}) is deprecated (removed in dcssa-rt {REMOVED_IN}): "
                  "pass IndexOptions(...) and report=Progress() or Callbacks(...)", DeprecationWarning, stacklevel=3)
    values = {_OLD_SETTINGS[k]: v for k, v in old.items() if k in _OLD_SETTINGS}
    spec: IndexSpec | None = old.get("index")
    if spec is not None:
        values.update(index=spec.name, nlist=spec.nlist, m=spec.m, nprobe=spec.nprobe, ef=spec.ef,
                      target_recall=spec.target_recall)
    if report is SILENT:  # 0.1 showed bars unless progress=False; steps and warnings went to say / warn
        report = Callbacks(say=old.get("say", silent), warn=old.get("warn", silent), bars=old.get("progress", True))
    return dataclasses.replace(options, **values), report

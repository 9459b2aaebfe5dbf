"""Partial sketches as the recall queries of a FAISS index, when the photos come with tracings.

An index is tuned and judged on the queries it will serve: the embeddings of partial sketches
(each stroke's session output), not photos. When PHOTOS is a dataset's photo folder (``DS/photo``,
or ARNet's ``DS/testB``) with the QMUL stroke file ``DS/DS_Coordinate`` beside it, its tracings are
replayed stroke by stroke through the bundle's sketch encoder (and head) with no gallery; every
prefix gives one query. Other folders fall back to photo-derived queries (faiss_index).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backends import Backend
from ..contract.bundle import Bundle
from ..errors import DcssaError
from ..progress import SILENT, Reporter
from ..stroke.parse import points_to_strokes

#: tracings replayed at most (spread over the file); every prefix of each is a query
MAX_SKETCHES = 60


def coordinate_file(photos: str | Path) -> Path | None:
    """``DS/DS_Coordinate`` beside the photo folder ``DS/<photos>``, when there is one."""
    root = Path(photos).resolve().parent
    coord = root / f"{root.name}_Coordinate"
    return coord if coord.is_file() else None


def sketch_queries(photos: str | Path, bundle: Bundle, backend: Backend, *, max_sketches: int = MAX_SKETCHES,
                   report: Reporter = SILENT) -> tuple[np.ndarray, str] | None:
    """(queries, description) from the tracings beside ``photos``, or None when there are none."""
    found = targeted_sketch_queries(photos, bundle, backend, max_sketches=max_sketches, report=report)
    return None if found is None else found[:2]


def targeted_sketch_queries(photos: str | Path, bundle: Bundle, backend: Backend, *,
                            max_sketches: int = MAX_SKETCHES,
                            report: Reporter = SILENT) -> tuple[np.ndarray, str, list[str]] | None:
    """(queries, description, each query's target photo name without extension), or None."""
    from ..data.qmul import load_coordinates, sketch_points, target_photo
    from ..session import Retriever

    coord = coordinate_file(photos)
    if coord is None:
        return None
    try:
        coords = load_coordinates(coord)
        keys = sorted(k for k in coords if isinstance(k, str))
        keys = [keys[i] for i in np.linspace(0, len(keys) - 1, min(max_sketches, len(keys))).round().astype(int)] if keys else []
        keys = list(dict.fromkeys(keys))
        sketches = [points_to_strokes(sketch_points(coords[k], k, coord)) for k in keys]
    except DcssaError as exc:  # an unreadable stroke file is no reason to fail the index: say it, fall back
        report(f"index: {coord.name} not used for recall queries ({exc.message})")
        return None
    if not sketches:
        return None
    session = Retriever(bundle, None, backend=backend, confidence=None,
                        max_strokes=max(bundle.max_strokes, max(len(s) for s in sketches))).session()
    rows, targets = [], []
    with report.bar(len(sketches), "recall queries", "sketch", leave=False) as bar:
        for key, strokes in zip(keys, sketches):
            session.reset()
            rows += [session.add_stroke(s).embedding.reshape(-1) for s in strokes]
            targets += [target_photo(key)] * len(strokes)
            bar.update(1)
    report(f"index: recall queries = {len(rows)} partial sketches of {len(sketches)} tracings ({coord.name})")
    return (np.stack(rows).astype(np.float32),
            f"partial sketches: every stroke prefix of {len(sketches)} tracings of {coord.name}", targets)

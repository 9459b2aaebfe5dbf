"""The ARNet authors' evaluation: every sketch PNG of a split through the sketch encoder, its photo's
rank among the split's photos, acc@1/5/10 as their ``get_acc`` prints it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..contract import manifest as mf
from ..data.arnet import ArnetSplit
from ..data.qmul import DatasetError
from ..stroke.pipeline import PhotoPipeline

ACC_K = (1, 5, 10)


def target_ranks(queries: np.ndarray, photos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target: 1 + photos scoring strictly higher (ties count in its favour)."""
    scores = np.asarray(queries, np.float64) @ np.asarray(photos, np.float64).T
    own = scores[np.arange(len(targets)), targets]
    return 1 + (scores > own[:, None]).sum(axis=1)


def acc_at_k(ranks: np.ndarray) -> dict[str, float]:
    """The authors' top-K accuracies, in percent rounded to 3 decimals as ``get_acc`` prints them."""
    ranks = np.asarray(ranks)
    return {f"acc@{k}": round(float((ranks <= k).sum()) / len(ranks) * 100, 3) for k in ACC_K}


def embed_pngs(paths: list[Path], retriever, batch: int = 8) -> np.ndarray:
    """Sketch PNGs through the authors' transform (the same as their photos') and the sketch encoder."""
    pipe, enc, out = PhotoPipeline(retriever.bundle.photo_recipe), retriever.encoder, retriever.encoder_output
    rows = []
    for i in range(0, len(paths), batch):
        x = []
        for p in paths[i:i + batch]:
            try:
                with Image.open(p) as im:
                    x.append(pipe.preprocess(im))
            except (OSError, UnidentifiedImageError) as exc:
                raise DatasetError(f"unreadable sketch image ({exc})", path=p, hint="replace or remove the file") from None
        rows.append(enc.run({mf.IMAGES: np.concatenate(x)})[out])
    return np.concatenate(rows)


def png_run(data: ArnetSplit, retriever, gallery) -> dict:
    """acc@1/5/10 of the split's sketch PNGs against ``gallery`` (the split's photos), per sketch ranks too."""
    index = {pid: i for i, pid in enumerate(gallery.ids)}
    targets = np.array([index[data.photo_id(photo)] for _, photo in data.pngs])
    emb = embed_pngs([p for p, _ in data.pngs], retriever)
    ranks = target_ranks(emb, gallery.embeddings, targets)
    return {"metrics": acc_at_k(ranks), "sketches": len(ranks),
            "ranks": {p.name: int(r) for (p, _), r in zip(data.pngs, ranks)}}

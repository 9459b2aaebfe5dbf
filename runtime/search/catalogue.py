"""What a retriever searches, as ONE value: the gallery, its confidence calibrator and their fingerprint.

A server swaps catalogues while it serves (``dcssa-rt serve``: SIGHUP or ``POST /v1/admin/reload``),
so the three travel together and are replaced by one reference assignment: a stroke never ranks on
the new gallery with the old calibrator. The fingerprint is a short hash of the catalogue's
manifest files (gallery.json with its index description, ids.json, labels.npy, confidence.json);
every response carries it, so clients see which catalogue answered while replicas roll over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .confidence import CONFIDENCE_FILE, Calibrator, load_calibrator
from .gallery import GALLERY_META, IDS, LABELS, Gallery

SAMPLED_ROWS = 1024  # rows of an in-memory matrix a fingerprint reads (a file-backed one reads none)
FINGERPRINT_CHARS = 12  # 48 bits: tells catalogues apart, not a security boundary
#: the files a fingerprint hashes, in this order (absent ones hash as empty); the embeddings matrix
#: is covered by gallery.json (count, dim, creation time, encoder) without reading gigabytes
MANIFEST = (GALLERY_META, IDS, LABELS, CONFIDENCE_FILE)


@dataclass(frozen=True)
class Catalogue:
    """A gallery (None: no search), its calibrator (None: no confidence) and the fingerprint of both."""

    gallery: Gallery | None = None
    confidence: Calibrator | None = None
    fingerprint: str | None = None

    @classmethod
    def of(cls, gallery: Gallery | None, confidence: Calibrator | None) -> Catalogue:
        return cls(gallery, confidence, catalogue_fingerprint(gallery, confidence))

    @property
    def size(self) -> int:
        return 0 if self.gallery is None else len(self.gallery)


def catalogue_fingerprint(gallery: Gallery | None, confidence: Calibrator | None = None) -> str | None:
    """Short sha256 of the gallery folder's manifest files (of the ids and matrix for an in-memory one)."""
    if gallery is None:
        return None
    h = hashlib.sha256()
    if gallery.path is not None and (Path(gallery.path) / GALLERY_META).is_file():
        for name in MANIFEST:
            file = Path(gallery.path) / name
            data = file.read_bytes() if file.is_file() else b""
            h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    else:  # built in memory (tests, benchmarks): the ids, the shape and up to SAMPLED_ROWS rows of the matrix
        emb = gallery.embeddings
        h.update(json.dumps([gallery.ids, list(emb.shape), str(emb.dtype)]).encode())
        h.update(np.ascontiguousarray(emb[:: max(1, len(emb) // SAMPLED_ROWS)]).tobytes())
    if confidence is not None and (gallery.path is None or confidence.path is None):
        h.update(json.dumps(confidence.doc, sort_keys=True).encode())  # a calibrator not read from the folder
    return h.hexdigest()[:FINGERPRINT_CHARS]


def load_catalogue(path: str | Path, bundle) -> Catalogue:
    """The catalogue in folder ``path``, fully loaded and checked against ``bundle``.

    Raises (GalleryError, ConfidenceError) for a folder that is incomplete, corrupted, or built by
    another photo encoder, or a calibrator fitted for another bundle or gallery: a server then keeps
    the catalogue it has.
    """
    gallery = Gallery.load(path, bundle)  # checks the photo encoder and the embedding size
    return Catalogue.of(gallery, load_calibrator(bundle, gallery))

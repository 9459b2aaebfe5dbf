"""dcssa.runtime: serve an exported DC-SSA bundle with numpy plus onnxruntime (no torch).

The subpackages follow a stroke: ``contract`` (the bundle), ``stroke`` (strokes -> raster -> encoder
input; the stroke head), ``backends`` (one runner shape per engine), ``search`` (the photo matrix and
its FAISS index), ``session.py`` (the hub); around them ``indexing``, ``data``, ``evaluation``,
``serve`` and ``cli``. See docs/architecture.md.

    bundle = Bundle.load("dcssa-bundle")
    gallery = Gallery.load("dcssa-bundle/gallery", bundle)
    retriever = Retriever(bundle, gallery, backend="ort-cpu")
    session = retriever.session()
    result = session.add_stroke(points)   # (n, 2) points of one stroke, 256 frame
"""

from . import compat
from .backends import available_backends, get_backend
from .contract.bundle import Bundle
from .errors import BackendError, BundleError, DcssaError, GalleryError, SessionError, StrokeError
from .indexing.build import build_gallery
from .indexing.options import IndexOptions
from .search.gallery import Gallery
from .session import QueryResult, Retriever, StrokeSession
from .stroke.pipeline import PhotoPipeline, SketchPipeline

__all__ = [
    "Bundle",
    "Gallery",
    "Retriever",
    "StrokeSession",
    "QueryResult",
    "SketchPipeline",
    "PhotoPipeline",
    "build_gallery",
    "IndexOptions",
    "available_backends",
    "get_backend",
    "DcssaError",
    "BundleError",
    "GalleryError",
    "BackendError",
    "SessionError",
    "StrokeError",
]

#: import paths of the 0.1 layout -> where their names live now (deprecated, removed in 0.3)
MOVED = {
    "dcssa.runtime.manifest": ("dcssa.runtime.contract.manifest",),
    "dcssa.runtime.recipes": ("dcssa.runtime.contract.recipes",),
    "dcssa.runtime.bundle": ("dcssa.runtime.contract.bundle",),
    "dcssa.runtime.strokes": ("dcssa.runtime.stroke.parse",),
    "dcssa.runtime.raster": ("dcssa.runtime.stroke.raster",),
    "dcssa.runtime.pipeline": ("dcssa.runtime.stroke.pipeline",),
    "dcssa.runtime.head": ("dcssa.runtime.stroke.head",),
    "dcssa.runtime.profiles": ("dcssa.runtime.backends.profiles",),
    "dcssa.runtime.backends.optional": ("dcssa.runtime.extras",),
    "dcssa.runtime.gallery": ("dcssa.runtime.search.gallery", "dcssa.runtime.indexing.build",
                              "dcssa.runtime.indexing.embed", "dcssa.runtime.data.photos"),
    "dcssa.runtime.faiss_index": ("dcssa.runtime.search.faiss_index", "dcssa.runtime.indexing.faiss_build"),
    "dcssa.runtime.confidence": ("dcssa.runtime.search.confidence",),
    "dcssa.runtime.ray_index": ("dcssa.runtime.indexing.ray_embed",),
    "dcssa.runtime.sketch_queries": ("dcssa.runtime.indexing.queries",),
    "dcssa.runtime.dataset": ("dcssa.runtime.data.datasets",),
    "dcssa.runtime.synthetic": ("dcssa.runtime.data.synthetic",),
    "dcssa.runtime.evaluation.qmul": ("dcssa.runtime.data.qmul",),
    "dcssa.runtime.evaluation.arnet": ("dcssa.runtime.data.arnet", "dcssa.runtime.evaluation.png_run"),
    "dcssa.runtime.evaluation.pipeline": ("dcssa.runtime.evaluation.run",),
    "dcssa.runtime.evaluation.confidence": ("dcssa.runtime.evaluation.fit_confidence",),
    "dcssa.runtime.evaluation.cli": ("dcssa.runtime.cli.evaluate",),
    "dcssa.runtime.serve.cli": ("dcssa.runtime.cli.serve",),
    "dcssa.runtime.cli_options": ("dcssa.runtime.cli.options",),
    "dcssa.runtime.cli_util": ("dcssa.runtime.cli.console", "dcssa.runtime.contract.bundle"),
}
compat.install(MOVED)

"""dcssa.runtime: serve an exported DC-SSA bundle with numpy plus onnxruntime (no torch).

    bundle = Bundle.load("dcssa-bundle")
    gallery = Gallery.load("dcssa-bundle/gallery", bundle)
    retriever = Retriever(bundle, gallery, backend="ort-cpu")
    session = retriever.session()
    result = session.add_stroke(points)   # (n, 2) points of one stroke, 256 frame
"""

from .backends import available_backends, get_backend
from .bundle import Bundle
from .errors import BackendError, BundleError, DcssaError, GalleryError, SessionError, StrokeError
from .gallery import Gallery, build_gallery
from .pipeline import PhotoPipeline, SketchPipeline
from .session import QueryResult, Retriever, StrokeSession

__all__ = [
    "Bundle",
    "Gallery",
    "Retriever",
    "StrokeSession",
    "QueryResult",
    "SketchPipeline",
    "PhotoPipeline",
    "build_gallery",
    "available_backends",
    "get_backend",
    "DcssaError",
    "BundleError",
    "GalleryError",
    "BackendError",
    "SessionError",
    "StrokeError",
]

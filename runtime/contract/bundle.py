"""Reading a bundle folder: the manifest, and graph files checked against their recorded sha256."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from functools import cached_property
from pathlib import Path

from ..errors import BundleError
from . import manifest as mf
from .recipes import PhotoRecipe, SketchRecipe, default_preprocessing

BUNDLE_ENV = "DCSSA_BUNDLE"
DEFAULT_BUNDLE = "dcssa-bundle"
#: what a command prints (stderr) and a report says when a bundle came from a demo checkpoint
DEMO_WARNING = (
    "note: this bundle was exported from a DEMO checkpoint (synthetic weights): "
    "its rankings demonstrate the pipeline, not retrieval quality."
)
REEXPORT = "re-export it with `dcssa-export --ckpt model.pth --out {path} --force`"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_manifest(folder: Path, names: list[str] | tuple[str, ...], *, phase: int | None, feature_dim: int,
                 embed_dim: int, heads: int, demo: bool = False, tools: dict | None = None,
                 source: dict | None = None, parity: dict | None = None, family: str = mf.DCSSA,
                 preprocessing: dict | None = None, image_size: int | None = None,
                 encoder: dict | None = None) -> dict:
    """The manifest of a freshly exported fp32 bundle whose graphs ``<name>.onnx`` lie in ``folder``.

    ``feature_dim`` is what the sketch encoder emits (DC-SSA: the 2048-d step feature; ARNet: the
    embedding itself); ``heads`` those of the stroke head (DC-SSA) or of the ViT (ARNet), whose
    other sizes go to ``encoder``.
    """
    files, graphs = {}, {}
    for name in names:
        fname = f"{name}.onnx"
        files[fname] = {"sha256": sha256_file(folder / fname), "bytes": (folder / fname).stat().st_size}
        sig = mf.signature(name, feature_dim, embed_dim, family=family, image_size=image_size)
        graphs[name] = {"fp32": {"file": fname, "precision": "fp32", **sig}}
    dims = {"feature": feature_dim, "embedding": embed_dim, "heads": heads}
    dims["head_dim"] = (encoder or {}).get("head_dim", feature_dim // heads)
    if encoder:
        dims["encoder"] = encoder
    return {
        "schema_version": mf.SCHEMA_VERSION,
        "family": family,
        "phase": phase,
        "demo": demo,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dims": dims,
        "limits": {"max_strokes": mf.DEFAULT_MAX_STROKES},
        "preprocessing": preprocessing or default_preprocessing(),
        "graphs": graphs,
        "precisions": ["fp32"],
        "files": files,
        "onnx": {"opset": mf.OPSET, "ir_version": mf.IR_VERSION},
        "tools": tools or {},
        "source": source or {},
        "parity": parity or {},
    }


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated (removed in dcssa-rt 0.3): use {new}", DeprecationWarning, stacklevel=3)


def default_bundle_path() -> Path:
    return Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)


class Bundle:
    """A loaded bundle. Graph files are hashed the first time they are used, never trusted blindly."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self._verified: set[str] = set()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Bundle:
        path = Path(path) if path is not None else default_bundle_path()
        mpath = path / mf.MANIFEST
        if not path.is_dir():
            raise BundleError(
                "no bundle folder here",
                path=path,
                hint="export one with `dcssa-export --ckpt model.pth` (writes ./dcssa-bundle), "
                f"or point --bundle / ${BUNDLE_ENV} at one",
            )
        if not mpath.is_file():
            raise BundleError("not a bundle: manifest.json is missing", path=path, hint=REEXPORT.format(path=path))
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"corrupted manifest ({exc})", path=mpath, hint=REEXPORT.format(path=path)) from None
        if not isinstance(manifest, dict) or "family" not in manifest:
            raise BundleError("not a bundle manifest (no model family)", path=mpath, hint=REEXPORT.format(path=path))
        if manifest["family"] not in mf.FAMILIES:
            raise BundleError(
                f"model family {manifest['family']!r} is not one this runtime serves ({', '.join(mf.FAMILIES)})",
                path=mpath, hint="upgrade dcssa-rt")
        version = manifest.get("schema_version")
        if version not in mf.READABLE_SCHEMAS:
            newer = isinstance(version, int) and version > mf.SCHEMA_VERSION
            raise BundleError(
                f"manifest schema version {version!r} is not one this runtime reads "
                f"({', '.join(map(str, mf.READABLE_SCHEMAS))})",
                path=mpath,
                hint="upgrade dcssa-rt" if newer else REEXPORT.format(path=path),
            )
        for key in ("dims", "graphs", "files", "preprocessing", *(("phase",) if manifest["family"] == mf.DCSSA else ())):
            if key not in manifest:
                raise BundleError(f"manifest lacks '{key}'", path=mpath, hint=REEXPORT.format(path=path))
        bundle = cls(path, mf.upgrade(manifest))
        bundle.sketch_recipe, bundle.photo_recipe  # noqa: B018 - validate the recipes at load time
        return bundle

    # -- facts -------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return str(self.manifest["family"])

    @property
    def phase(self) -> int | None:
        """DC-SSA's training phase (2: stroke head, 1: projection); None for other families."""
        phase = self.manifest.get("phase")
        return None if phase is None else int(phase)

    @property
    def head_graph(self) -> str | None:
        """The graph after the sketch encoder (stroke head or projection), or None (ARNet)."""
        return mf.head_graph(self.manifest["graphs"])

    @property
    def sketch_output(self) -> str:
        """The sketch encoder's output tensor name: features for a head, or the embeddings."""
        return mf.encoder_output(self.graph_spec(mf.SKETCH_ENCODER))

    @property
    def demo(self) -> bool:
        return bool(self.manifest.get("demo"))

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["dims"]["feature"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["dims"]["embedding"])

    @property
    def heads(self) -> int:
        return int(self.manifest["dims"]["heads"])

    @property
    def max_strokes(self) -> int:
        return int(self.manifest.get("limits", {}).get("max_strokes", mf.DEFAULT_MAX_STROKES))

    @property
    def kind(self) -> str:
        """``dcssa phase 2``, ``dcssa phase 1`` or ``arnet``: what users call the model."""
        return self.family if self.phase is None else f"{self.family} phase {self.phase}"

    def precisions(self, name: str = mf.SKETCH_ENCODER) -> list[str]:
        return list(self.manifest["graphs"].get(name, {}))

    @cached_property
    def sketch_recipe(self) -> SketchRecipe:
        """How strokes become the sketch encoder's input (validated strictly); the stroke path's
        :class:`~dcssa.runtime.stroke.pipeline.SketchPipeline` carries it out."""
        return SketchRecipe.from_dict(self.manifest["preprocessing"].get("sketch"), path=self.path / mf.MANIFEST)

    @cached_property
    def photo_recipe(self) -> PhotoRecipe:
        """How a photo becomes the photo encoder's input (validated strictly)."""
        return PhotoRecipe.from_dict(self.manifest["preprocessing"].get("photo"), path=self.path / mf.MANIFEST)

    @property
    def sketch_pipeline(self):
        """Deprecated (removed in 0.3): ``SketchPipeline(bundle.sketch_recipe)``."""
        from ..stroke.pipeline import (
            SketchPipeline,  # deprecated alias: the contract does not depend on the stroke path
        )

        _deprecated("Bundle.sketch_pipeline", "SketchPipeline(bundle.sketch_recipe)")
        return SketchPipeline(self.sketch_recipe)

    @property
    def photo_pipeline(self):
        """Deprecated (removed in 0.3): ``PhotoPipeline(bundle.photo_recipe)``."""
        from ..stroke.pipeline import PhotoPipeline  # deprecated alias: the contract does not depend on the stroke path

        _deprecated("Bundle.photo_pipeline", "PhotoPipeline(bundle.photo_recipe)")
        return PhotoPipeline(self.photo_recipe)

    def graph_spec(self, name: str, precision: str = "fp32") -> mf.GraphSpec:
        """What a backend may know about graph ``name`` (from its manifest entry)."""
        return mf.GraphSpec.from_dict(name, self.graph_entry(name, precision))

    # -- files -------------------------------------------------------------------------------
    def graph_entry(self, name: str, precision: str = "fp32") -> dict:
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise BundleError(
                f"this {self.kind} bundle has no '{name}' graph (it has: {', '.join(graphs)})",
                path=self.path,
            )
        if precision not in graphs[name]:
            raise BundleError(
                f"no {precision} version of '{name}' (available: {', '.join(graphs[name])})",
                path=self.path,
                hint="add it with `dcssa-export calibrate` / `--precision`, or pick an available precision",
            )
        return graphs[name][precision]

    def graph_path(self, name: str, precision: str = "fp32") -> Path:
        """The graph's file, after checking it exists and matches the manifest's sha256."""
        fname = self.graph_entry(name, precision)["file"]
        return self.verified_file(fname)

    def file_sha256(self, fname: str) -> str:
        try:
            return self.manifest["files"][fname]["sha256"]
        except KeyError:
            raise BundleError(f"manifest has no hash for {fname}", path=self.path, hint=REEXPORT.format(path=self.path)) from None

    def verified_file(self, fname: str) -> Path:
        path = self.path / fname
        if fname in self._verified:
            return path
        want = self.file_sha256(fname)
        if not path.is_file():
            raise BundleError("missing bundle file", path=path, hint=REEXPORT.format(path=self.path))
        got = sha256_file(path)
        if got != want:
            raise BundleError(
                f"corrupted: sha256 {got[:12]}... does not match the manifest's {want[:12]}...",
                path=path,
                hint=f"copy the bundle again or {REEXPORT.format(path=self.path)}",
            )
        self._verified.add(fname)
        return path

    def photo_encoder_id(self) -> str:
        """What a gallery records to prove which photo encoder embedded it (the fp32 graph hash)."""
        return self.file_sha256(self.graph_entry(mf.PHOTO_ENCODER, "fp32")["file"])

    def describe(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path),
            "schema_version": m["schema_version"],
            "upgraded_from": m.get("upgraded_from"),
            "family": self.family,
            "phase": self.phase,
            "demo": self.demo,
            "dims": m["dims"],
            "graphs": {k: list(v) for k, v in m["graphs"].items()},
            "created": m.get("created"),
            "tools": m.get("tools", {}),
        }

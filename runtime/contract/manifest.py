"""The bundle contract: graph names, tensor names, I/O signatures and schema versions.

The exporter writes ``manifest.json`` from these definitions and the runtime reads it back, so
every graph and tensor name is spelled here and nowhere else: other modules use the constants.
A :class:`GraphSpec` is what a backend may know about a graph (its tensors, which inputs are a
cache that grows by one output row per call, whether it is a heavy encoder, which op scopes must
stay in f32 under bf16); backends hold no model knowledge of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: 2: graph entries carry their spec (state pairs, heavy, f32 scopes); schema-1 bundles are
#: upgraded in memory by :func:`upgrade` (their specs are the DC-SSA defaults below).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
#: model families: a family is its graphs' specs, its preprocessing and an export loader
DCSSA = "dcssa"
ARNET = "arnet"
FAMILIES = (DCSSA, ARNET)
FAMILY = DCSSA  # the default, and the only family of schema-1 bundles
MANIFEST = "manifest.json"
OPSET = 17
# onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads at most 13. IR 8 is what opset 17 needs.
IR_VERSION = 8
DEFAULT_MAX_STROKES = 256

# -- graph names ---------------------------------------------------------------------------------
SKETCH_ENCODER = "sketch_encoder"
PHOTO_ENCODER = "photo_encoder"
HEAD_STEP = "stroke_head_step"
HEAD_FULL = "stroke_head_full"
SKETCH_PROJECTION = "sketch_projection"

# -- tensor names --------------------------------------------------------------------------------
IMAGES = "images"
FEATURES = "features"
FEATURE = "feature"
EMBEDDINGS = "embeddings"
EMBEDDING = "embedding"
PAST_KEYS = "past_keys"
PAST_VALUES = "past_values"
KEY = "key"
VALUE = "value"

#: the op scope of the first trunk convolution: kept in f32 by OpenVINO's bf16 mode (measured:
#: alone in bf16 it costs as much feature cosine as bf16 everywhere; README "Intel fast path")
STEM_CONV_SCOPE = "/trunk/Conv2d_1a_3x3/"


@dataclass(frozen=True)
class GraphSpec:
    """What a runner may know about one graph; symbolic dims are strings ("N", "T", "H", "W")."""

    name: str
    inputs: dict[str, list]
    outputs: dict[str, list]
    #: cache input -> the output row appended to it after every call (the stroke head's K/V)
    state: dict[str, str] = field(default_factory=dict)
    #: a heavy encoder: worth spinning thread pools and compiling for static shapes
    heavy: bool = False
    #: op-name scopes whose ops run in f32 when the graph runs in bf16 (in graph order)
    f32_scopes: tuple[str, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    def to_dict(self) -> dict:
        doc: dict = {"inputs": self.inputs, "outputs": self.outputs}
        if self.state:
            doc["state"] = dict(self.state)
        if self.heavy:
            doc["heavy"] = True
        if self.f32_scopes:
            doc["f32_scopes"] = list(self.f32_scopes)
        return doc

    @classmethod
    def from_dict(cls, name: str, doc: Mapping) -> GraphSpec:
        return cls(name, dict(doc["inputs"]), dict(doc["outputs"]), dict(doc.get("state", {})),
                   bool(doc.get("heavy", False)), tuple(doc.get("f32_scopes", ())))


# name -> spec with symbolic D / E / S (square input side); :func:`graph_spec` fills them in.
_SPECS: dict[str, GraphSpec] = {
    SKETCH_ENCODER: GraphSpec(SKETCH_ENCODER, {IMAGES: ["N", 3, 299, 299]}, {FEATURES: ["N", "D"]},
                              heavy=True, f32_scopes=(STEM_CONV_SCOPE,)),
    PHOTO_ENCODER: GraphSpec(PHOTO_ENCODER, {IMAGES: ["N", 3, "H", "W"]}, {EMBEDDINGS: ["N", "E"]},
                             heavy=True, f32_scopes=(STEM_CONV_SCOPE,)),
    HEAD_STEP: GraphSpec(
        HEAD_STEP,
        {FEATURE: [1, "D"], PAST_KEYS: ["T", "D"], PAST_VALUES: ["T", "D"]},
        {EMBEDDING: [1, "E"], KEY: [1, "D"], VALUE: [1, "D"]},
        state={PAST_KEYS: KEY, PAST_VALUES: VALUE},
    ),
    HEAD_FULL: GraphSpec(HEAD_FULL, {FEATURES: ["T", "D"]}, {EMBEDDINGS: ["T", "E"]}),
    SKETCH_PROJECTION: GraphSpec(SKETCH_PROJECTION, {FEATURES: ["N", "D"]}, {EMBEDDINGS: ["N", "E"]}),
}

# ARNet: two ViT encoders that each end in the unit-norm embedding; no stroke head (every partial
# sketch is encoded as it stands), a fixed square input (the ViT's position embedding).
_ARNET_SPECS: dict[str, GraphSpec] = {
    name: GraphSpec(name, {IMAGES: ["N", 3, "S", "S"]}, {EMBEDDINGS: ["N", "E"]}, heavy=True)
    for name in (SKETCH_ENCODER, PHOTO_ENCODER)
}
FAMILY_SPECS: dict[str, dict[str, GraphSpec]] = {DCSSA: _SPECS, ARNET: _ARNET_SPECS}

PHASE_GRAPHS = {
    2: (SKETCH_ENCODER, PHOTO_ENCODER, HEAD_STEP, HEAD_FULL),
    1: (SKETCH_ENCODER, PHOTO_ENCODER, SKETCH_PROJECTION),
}
ARNET_GRAPHS = (SKETCH_ENCODER, PHOTO_ENCODER)


def graph_spec(name: str, feature_dim: int | None = None, embed_dim: int | None = None, *,
               family: str = DCSSA, image_size: int | None = None) -> GraphSpec:
    """The spec of graph ``name`` of ``family``, with D, E and S filled in where given."""
    spec = FAMILY_SPECS[family][name]
    fill = {k: v for k, v in (("D", feature_dim), ("E", embed_dim), ("S", image_size)) if v is not None}

    def conv(tensors: dict[str, list]) -> dict[str, list]:
        return {k: [fill.get(d, d) for d in dims] for k, dims in tensors.items()}

    return GraphSpec(name, conv(spec.inputs), conv(spec.outputs), dict(spec.state), spec.heavy, spec.f32_scopes)


def signature(name: str, feature_dim: int, embed_dim: int, *, family: str = DCSSA,
              image_size: int | None = None) -> dict:
    """The manifest entry fields of graph ``name`` (I/O signature and runtime facts)."""
    return graph_spec(name, feature_dim, embed_dim, family=family, image_size=image_size).to_dict()


def head_graph(names) -> str | None:
    """The graph that turns sketch-encoder outputs into embeddings, if the bundle has one.

    DC-SSA phase 2: the causal stroke head; phase 1: the projection; ARNet: none (the sketch
    encoder's output is the embedding).
    """
    for name in (HEAD_STEP, SKETCH_PROJECTION):
        if name in names:
            return name
    return None


def encoder_output(spec: GraphSpec) -> str:
    """The one output of an encoder graph: ``features`` for a head to consume, or ``embeddings``."""
    return spec.output_names[0]


def upgrade(manifest: dict) -> dict:
    """A schema-1 manifest as schema 2 (in memory): graph entries gain the default spec fields.

    Schema 1 wrote only ``inputs``/``outputs`` per graph entry; what a backend must know beyond
    that (state pairs, heavy, f32 scopes) was then hard-coded in the backends, and is exactly the
    DC-SSA default of :func:`graph_spec`.
    """
    if manifest.get("schema_version") != 1:
        return manifest
    out = {**manifest, "schema_version": 2, "upgraded_from": 1}
    dims = manifest.get("dims", {})
    graphs = {}
    for name, per in manifest.get("graphs", {}).items():
        spec = signature(name, dims.get("feature"), dims.get("embedding")) if name in _SPECS else {}
        graphs[name] = {prec: {**spec, **entry} for prec, entry in per.items()}
    out["graphs"] = graphs
    return out

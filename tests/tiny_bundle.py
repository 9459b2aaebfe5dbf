"""A tiny, valid phase-2 DC-SSA-shaped bundle built with onnx.helper, and its numpy reference.

The runtime must work without torch, so its own tests cannot lean on the exporter. These graphs
have the exact names, tensor names and shapes of the manifest's specs, but cheap bodies (average
pools and small matrices instead of Inception trunks) whose every output numpy computes
independently; the stroke heads are SPEC section 2's head in full, causal step and non-causal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dcssa.runtime.backends import get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle, new_manifest
from dcssa.runtime.data.synthetic import textured_photo
from dcssa.runtime.indexing.build import build_gallery
from dcssa.runtime.search.gallery import Gallery

#: the sketch encoder's pool: 299 = 13 cells of 23 pixels a side. Small cells keep float32 sums of
#: the near-constant background accurate (75-pixel cells put the features 2e-5 off float64)
POOL = 23
CELLS = 13
LN_EPS = 1e-5
NORM_EPS = 1e-12
_HEAD_KEYS = ("ln_g", "ln_b", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "wp", "bp")


def weights_path(folder: Path) -> Path:
    """Where the weights of the bundle at ``folder`` are kept: beside it, never inside it."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}-weights.npz"


def make_weights(seed: int, feature_dim: int, embed_dim: int) -> dict[str, np.ndarray]:
    """Small random float32 weights; matrices act on row vectors (``x @ W + b``)."""
    rng = np.random.default_rng(seed)
    d, e = feature_dim, embed_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        return rng.normal(0, 1 / math.sqrt(rows), (rows, cols)).astype(np.float32)

    def vec(n: int, scale: float = 0.1, centre: float = 0.0) -> np.ndarray:
        return (centre + rng.normal(0, scale, n)).astype(np.float32)

    w = {"sketch_w": mat(3 * CELLS * CELLS, d), "sketch_b": vec(d), "photo_w": mat(3, e), "photo_b": vec(e),
         "ln_g": vec(d, centre=1.0), "ln_b": vec(d)}
    for name in ("q", "k", "v", "o"):
        w[f"w{name}"], w[f"b{name}"] = mat(d, d), vec(d)
    w["wp"], w["bp"] = mat(d, e), vec(e)
    return w


class _GraphBuilder:
    """Nodes and initializers of one graph, with generated unique tensor names."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self._count = 0

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self._count += 1
        out = out or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"/{op_type}_{self._count}", **attrs))
        return out

    def w(self, key: str) -> str:
        if key not in self.inits:
            self.inits[key] = numpy_helper.from_array(self.weights[key], key)
        return key

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(value, name)
        return name

    def linear(self, x: str, weight: str, bias: str, out: str | None = None) -> str:
        return self.op("Add", self.op("MatMul", x, self.w(weight)), self.w(bias), out=out)

    def normalize(self, x: str, out: str | None = None) -> str:
        """Rows divided by max(L2 norm, 1e-12), as F.normalize."""
        norm = self.op("ReduceL2", x, axes=[-1], keepdims=1)
        floor = self.const("norm_eps", np.array(NORM_EPS, np.float32))
        return self.op("Div", x, self.op("Max", norm, floor), out=out)

    def model(self, name: str, feature_dim: int, embed_dim: int) -> onnx.ModelProto:
        spec = mf.graph_spec(name, feature_dim, embed_dim)
        ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, dims) for k, dims in spec.inputs.items()]
        outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, dims) for k, dims in spec.outputs.items()]
        graph = helper.make_graph(self.nodes, name, ins, outs, initializer=list(self.inits.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", mf.OPSET)],
                                  producer_name="tests.tiny_bundle")
        model.ir_version = mf.IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def _sketch_encoder(g: _GraphBuilder) -> None:
    pooled = g.op("AveragePool", mf.IMAGES, kernel_shape=[POOL, POOL], strides=[POOL, POOL])
    g.normalize(g.linear(g.op("Flatten", pooled, axis=1), "sketch_w", "sketch_b"), out=mf.FEATURES)


def _photo_encoder(g: _GraphBuilder) -> None:
    pooled = g.op("Flatten", g.op("GlobalAveragePool", mf.IMAGES), axis=1)
    g.normalize(g.linear(pooled, "photo_w", "photo_b"), out=mf.EMBEDDINGS)


def _split_heads(g: _GraphBuilder, x: str, heads: int, perm: list[int]) -> str:
    """(L, D) -> (L, heads, D/heads) -> transposed by ``perm``."""
    shape = g.const(f"heads_shape_{heads}", np.array([-1, heads, g.weights["wq"].shape[0] // heads], np.int64))
    return g.op("Transpose", g.op("Reshape", x, shape), perm=perm)


def _head_tail(g: _GraphBuilder, x: str, q: str, keys: str, values: str, heads: int, emb_out: str) -> None:
    """Attention of rows ``q`` over ``keys``/``values``, then residual gate, normalise, project."""
    d = g.weights["wq"].shape[0]
    qh = _split_heads(g, q, heads, [1, 0, 2])  # (H, L, dh)
    kh = _split_heads(g, keys, heads, [1, 2, 0])  # (H, dh, S)
    vh = _split_heads(g, values, heads, [1, 0, 2])  # (H, S, dh)
    scale = g.const("scale", np.array(1.0 / math.sqrt(d // heads), np.float32))
    probs = g.op("Softmax", g.op("Mul", g.op("MatMul", qh, kh), scale), axis=-1)
    merged = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, vh), perm=[1, 0, 2]),
                  g.const("rows_shape", np.array([-1, d], np.int64)))
    o = g.linear(merged, "wo", "bo")
    h = g.normalize(g.op("Add", g.op("Mul", x, o), x))
    g.normalize(g.linear(h, "wp", "bp"), out=emb_out)


def _qkv(g: _GraphBuilder, x: str, key_out: str | None = None, value_out: str | None = None) -> tuple[str, str, str]:
    a = g.op("LayerNormalization", x, g.w("ln_g"), g.w("ln_b"), axis=-1, epsilon=LN_EPS)
    return g.linear(a, "wq", "bq"), g.linear(a, "wk", "bk", out=key_out), g.linear(a, "wv", "bv", out=value_out)


def _head_step(g: _GraphBuilder, heads: int) -> None:
    q, k, v = _qkv(g, mf.FEATURE, mf.KEY, mf.VALUE)
    keys = g.op("Concat", mf.PAST_KEYS, k, axis=0)
    values = g.op("Concat", mf.PAST_VALUES, v, axis=0)
    _head_tail(g, mf.FEATURE, q, keys, values, heads, mf.EMBEDDING)


def _head_full(g: _GraphBuilder, heads: int) -> None:
    q, k, v = _qkv(g, mf.FEATURES)
    _head_tail(g, mf.FEATURES, q, k, v, heads, mf.EMBEDDINGS)


_BODIES = {
    mf.SKETCH_ENCODER: lambda g, heads: _sketch_encoder(g),
    mf.PHOTO_ENCODER: lambda g, heads: _photo_encoder(g),
    mf.HEAD_STEP: _head_step,
    mf.HEAD_FULL: _head_full,
}


def _manifest(folder: Path, schema: int, dims: tuple[int, int, int]) -> dict:
    d, e, heads = dims
    manifest = new_manifest(folder, mf.PHASE_GRAPHS[2], phase=2, feature_dim=d, embed_dim=e, heads=heads)
    if schema == 1:  # what the first exporter wrote: the I/O signature only
        manifest["schema_version"] = 1
        for per in manifest["graphs"].values():
            for entry in per.values():
                for key in ("state", "heavy", "f32_scopes"):
                    entry.pop(key, None)
    return manifest


def write_tiny_bundle(folder: str | Path, *, schema: int = 2, seed: int = 0, feature_dim: int = 16,
                      embed_dim: int = 8, heads: int = 2) -> Path:
    """Write the bundle at ``folder`` (and its weights at :func:`weights_path`); returns ``folder``."""
    if schema not in (1, 2):
        raise ValueError(f"schema {schema}: only 1 and 2 are written")
    if feature_dim % heads:
        raise ValueError(f"{heads} heads do not divide {feature_dim}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = make_weights(seed, feature_dim, embed_dim)
    np.savez(weights_path(folder), heads=np.array(heads), **weights)
    for name, body in _BODIES.items():
        g = _GraphBuilder(weights)
        body(g, heads)
        onnx.save(g.model(name, feature_dim, embed_dim), folder / f"{name}.onnx")
    manifest = _manifest(folder, schema, (feature_dim, embed_dim, heads))
    (folder / mf.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def write_tiny_photos(folder: str | Path, count: int = 6, seed: int = 0) -> Path:
    """``count`` small PNG photos of varied sizes and aspect ratios under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(40, 80, 2))  # textured_photo needs sides > 30
        textured_photo(rng, w, h).save(folder / f"photo{i:02d}.png")
    return folder


def write_tiny_gallery(bundle: str | Path, out: str | Path, *, photos: int = 6, seed: int = 1) -> Gallery:
    """A gallery at ``out`` of :func:`write_tiny_photos` (kept beside it) embedded by ``bundle`` on ort-cpu."""
    out = Path(out)
    folder = write_tiny_photos(out.parent / f"{out.name}-photos", count=photos, seed=seed)
    return build_gallery(folder, Bundle.load(bundle), out, backend=get_backend("ort-cpu"))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


class TinyReference:
    """The tiny bundle's maths in float64 numpy, from the weights saved beside it."""

    def __init__(self, folder: str | Path) -> None:
        with np.load(weights_path(Path(folder))) as npz:
            self.heads = int(npz["heads"])
            self.w = {k: npz[k].astype(np.float64) for k in npz.files if k != "heads"}

    def sketch_features(self, images: np.ndarray) -> np.ndarray:
        """``(N, 3, 299, 299)`` -> ``(N, D)``: 23-pixel cell means, linear, normalise."""
        x = np.asarray(images, np.float64)
        n, c = x.shape[:2]
        span = POOL * CELLS
        cells = x[:, :, :span, :span].reshape(n, c, CELLS, POOL, CELLS, POOL).mean(axis=(3, 5))
        return _normalize(cells.reshape(n, -1) @ self.w["sketch_w"] + self.w["sketch_b"])

    def photo_embeddings(self, images: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` -> ``(N, E)``: channel means, linear, normalise."""
        means = np.asarray(images, np.float64).mean(axis=(2, 3))
        return _normalize(means @ self.w["photo_w"] + self.w["photo_b"])

    def _attend(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        d = q.shape[1]
        dh = d // self.heads
        out = np.empty_like(q)
        for i in range(self.heads):
            cols = slice(i * dh, (i + 1) * dh)
            out[:, cols] = _softmax(q[:, cols] @ keys[:, cols].T / math.sqrt(dh)) @ values[:, cols]
        return out

    def _head(self, x: np.ndarray, past_keys: np.ndarray, past_values: np.ndarray):
        w = self.w
        mu = x.mean(-1, keepdims=True)
        a = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + LN_EPS) * w["ln_g"] + w["ln_b"]
        q, k, v = (a @ w[f"w{n}"] + w[f"b{n}"] for n in "qkv")
        o = self._attend(q, np.concatenate([past_keys, k]), np.concatenate([past_values, v])) @ w["wo"] + w["bo"]
        h = _normalize(x * o + x)
        return _normalize(h @ w["wp"] + w["bp"]), k, v

    def head_full(self, features: np.ndarray) -> np.ndarray:
        """``(T, D)`` -> ``(T, E)``, every row attending to all T rows (the non-causal form)."""
        x = np.asarray(features, np.float64)
        empty = np.zeros((0, x.shape[1]))
        return self._head(x, empty, empty)[0]

    def head_step(self, feature: np.ndarray, past_keys: np.ndarray, past_values: np.ndarray):
        """One causal step: ``(1, D)`` feature and ``(T, D)`` caches -> (embedding, key, value)."""
        return self._head(np.asarray(feature, np.float64), np.asarray(past_keys, np.float64),
                          np.asarray(past_values, np.float64))

"""The bundle contract: names, I/O signatures and the preprocessing recipe as data.

The exporter writes ``manifest.json`` from these definitions and the runtime reads it back, so the
graph names, tensor names and preprocessing constants are written down in exactly one place.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
FAMILY = "dcssa"
MANIFEST = "manifest.json"
OPSET = 17
# onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads at most 13. IR 8 is what opset 17 needs.
IR_VERSION = 8
DEFAULT_MAX_STROKES = 256

SKETCH_ENCODER = "sketch_encoder"
PHOTO_ENCODER = "photo_encoder"
HEAD_STEP = "stroke_head_step"
HEAD_FULL = "stroke_head_full"
SKETCH_PROJECTION = "sketch_projection"

# name -> (inputs, outputs); symbolic dims are strings, D/E are filled in at export.
SIGNATURES: dict[str, tuple[dict[str, list], dict[str, list]]] = {
    SKETCH_ENCODER: ({"images": ["N", 3, 299, 299]}, {"features": ["N", "D"]}),
    PHOTO_ENCODER: ({"images": ["N", 3, "H", "W"]}, {"embeddings": ["N", "E"]}),
    HEAD_STEP: (
        {"feature": [1, "D"], "past_keys": ["T", "D"], "past_values": ["T", "D"]},
        {"embedding": [1, "E"], "key": [1, "D"], "value": [1, "D"]},
    ),
    HEAD_FULL: ({"features": ["T", "D"]}, {"embeddings": ["T", "E"]}),
    SKETCH_PROJECTION: ({"features": ["N", "D"]}, {"embeddings": ["N", "E"]}),
}

PHASE_GRAPHS = {
    2: (SKETCH_ENCODER, PHOTO_ENCODER, HEAD_STEP, HEAD_FULL),
    1: (SKETCH_ENCODER, PHOTO_ENCODER, SKETCH_PROJECTION),
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def default_preprocessing() -> dict:
    """SPEC section 4 as data: what the runtime does to strokes and photos before the encoders."""
    return {
        "sketch": {
            "frame": 256,
            "canvas": 400,
            "coordinates": "round(v / frame * canvas) in float32, half to even",
            "line": "bresenham-0.2.1",
            "draw_if": "0 < x < canvas and 0 < y < canvas",
            "dilation": {"structure": "cross3x3", "iterations": 1, "border": 0},
            "colours": "white strokes (255) on black (0), grey replicated to RGB",
            "size": [299, 299],
            "resample": "bilinear",
            "scale": 1.0 / 255.0,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "layout": "NCHW",
        },
        "photo": {
            "mode": "RGB",
            "resize_shorter_side": 299,
            "resample": "bilinear",
            "min_side": 75,
            "scale": 1.0 / 255.0,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "layout": "NCHW",
        },
    }


def signature(name: str, feature_dim: int, embed_dim: int) -> dict:
    """The concrete I/O signature of graph ``name`` for the manifest."""
    fill = {"D": feature_dim, "E": embed_dim}
    inputs, outputs = SIGNATURES[name]
    conv = lambda spec: {k: [fill.get(d, d) for d in v] for k, v in spec.items()}  # noqa: E731
    return {"inputs": conv(inputs), "outputs": conv(outputs)}

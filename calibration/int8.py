"""INT8 by explicit Q/DQ: calibration ranges, a recorded recipe, and the quantised graph.

What is quantised is an :class:`Int8Recipe` -- a calibration method and a set of graph blocks
(Inception blocks, attention projections, ...) -- chosen by measurement in
:mod:`dcssa.calibration.search` and stored in the bundle manifest so the choice can be audited and
repeated. How activations are encoded is not part of the recipe: it follows the target. Weights are
per-channel symmetric int8 everywhere; activations are uint8 ASYMMETRIC for onnxruntime CPU (its
fast integer kernels; a symmetric graph ran slower than fp32 there) and int8 SYMMETRIC (zero point
0) for TensorRT, the only encoding it accepts. One recipe therefore ships as two files.

Ranges are collected once per calibration method into onnxruntime's JSON calibration cache and
reused for every candidate recipe, so a sensitivity sweep costs one calibration pass, not dozens.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from dcssa.calibration.calibset import PrefixSet
from dcssa.calibration.reader import PrefixReader
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import DcssaError

METHODS = ("minmax", "entropy", "percentile")
# Operators whose outputs get ranges; quantising Concat/pools keeps int8 flowing between convs.
CALIBRATED_OPS = ("Conv", "MatMul", "Concat", "MaxPool", "AveragePool", "Relu", "Add", "Mul",
                  "Transpose", "Reshape", "Softmax", "LayerNormalization")
QUANTISED_OPS = ("Conv", "MatMul", "Concat", "MaxPool", "AveragePool")
# Kept in float whatever the recipe says: normalisation and the attention score path.
ALWAYS_FLOAT_OPS = ("LayerNormalization", "Softmax")

TRUNK_BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)
ATTENTION_BLOCKS = ("attention.norm", "attention.proj", "attention.scores", "attention.tail")
STEM_POOLS = "stem_pools"


class QuantisationError(DcssaError):
    """Quantisation could not produce a usable graph."""


def node_block(name: str) -> str:
    """Which block a node of an exported encoder belongs to, from the exporter's scoped names.

    ``/trunk/Mixed_6b/branch7x7_1/conv/Conv`` -> ``Mixed_6b``; the stem max-pools -> ``stem_pools``;
    the spatial attention splits into its LayerNorm, its four projections (q, k, v, out), the score
    path (scale, q.k^T, softmax, attention.v) and the tail (residual, pooling, L2 normalisation).
    """
    m = re.match(r"^/trunk/([A-Za-z0-9_]+?)(/|$)", name)
    if m:
        part = m.group(1)
        return part if part in TRUNK_BLOCKS else STEM_POOLS
    if re.match(r"^/attention/attn/norm/", name):
        return "attention.norm"
    if re.match(r"^/attention/attn/(q|k|v|out)/", name):
        return "attention.proj"
    if re.match(r"^/attention/attn/(MatMul|MatMul_1|Softmax|Mul)$", name):
        return "attention.scores"
    if name.startswith("/attention/"):
        return "attention.tail"
    if name.startswith(("/linear/", "/mlp_head/")):
        return "projection"
    # ARNet's ViT: the patch embedding, each block's four linear layers, the score path
    if name.startswith("/encoder/patch_embed/"):
        return "vit.patch_embed"
    m = re.match(r"^/encoder/blocks/blocks\.(\d+)/(attn/(qkv|proj)|mlp)/", name)
    if m:
        return f"vit.blocks.{int(m.group(1)):02d}"
    if re.match(r"^/encoder/blocks/blocks\.\d+/attn/(MatMul|MatMul_1|Softmax|Mul)$", name):
        return "vit.scores"
    return "other"


def graph_blocks(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Block -> node names, blocks in graph order."""
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        out.setdefault(node_block(node.name), []).append(node.name)
    return out


#: blocks a recipe search may quantise (the rest stay float: scores, norms, the tail, projections)
SEARCHABLE = re.compile(r"^(Conv2d_\w+|Mixed_\w+|stem_pools|attention\.proj|vit\.patch_embed|vit\.blocks\.\d+)$")


def searchable_blocks(model: onnx.ModelProto) -> list[str]:
    """The blocks of ``model`` a recipe search tries, in graph order (DC-SSA's trunk and attention
    projections, ARNet's patch embedding and transformer blocks)."""
    return [b for b in graph_blocks(model) if SEARCHABLE.match(b)]


def default_blocks() -> list[str]:
    """Everything with real arithmetic except the attention score path and normalisation."""
    return [*TRUNK_BLOCKS, STEM_POOLS, "attention.proj"]


@dataclass(frozen=True)
class Int8Recipe:
    """What gets quantised and how its ranges are calibrated; stored in the manifest.

    The activation encoding is the target's (``symmetric`` arguments below), so one recipe yields
    both the CPU and the TensorRT graph. Frozen: a recipe is a record, derive variants with
    :func:`dataclasses.replace`.
    """

    method: str = "minmax"
    blocks: list[str] = field(default_factory=default_blocks)
    per_channel: bool = True
    percentile: float = 99.999
    op_types: list[str] = field(default_factory=lambda: list(QUANTISED_OPS))
    exclude_nodes: list[str] = field(default_factory=list)  # individual nodes kept in float
    # only MatMuls by a constant (a weight): onnxruntime's MatMulConstBOnly (transformer recipe)
    const_b_only: bool = False
    # False: the quantised ops' outputs stay float (into the bias and residual Adds), as the
    # transformer recipe wants; True re-quantises them for the next quantised op (DC-SSA's chains)
    quantise_outputs: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantisationError(f"unknown calibration method {self.method!r}", hint=f"use one of {', '.join(METHODS)}")

    def to_dict(self) -> dict:
        """The fields; the transformer switches only when set, so older records read back unchanged."""
        d = asdict(self)
        for key, default in (("const_b_only", False), ("quantise_outputs", True)):
            if d[key] == default:
                del d[key]
        return d

    def record(self, *, symmetric: bool) -> dict:
        """The recipe as written to manifests and search records: with the encoding of its graph."""
        return {**self.to_dict(), "symmetric_activations": symmetric}

    @classmethod
    def from_dict(cls, d: dict) -> Int8Recipe:
        """Unknown keys are ignored, among them ``symmetric_activations`` (either value) of records."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def covers(self, block: str) -> bool:
        """Whether ``block`` is one of the recipe's blocks (entries may be globs: ``vit.blocks.*``)."""
        return any(fnmatch.fnmatchcase(block, pattern) for pattern in self.blocks)

    def nodes(self, model: onnx.ModelProto) -> list[str]:
        """Names of the nodes this recipe quantises in ``model``."""
        ops, skip = set(self.op_types), set(self.exclude_nodes)
        return [
            n.name
            for n in model.graph.node
            if self.covers(node_block(n.name)) and n.op_type in ops and n.op_type not in ALWAYS_FLOAT_OPS
            and n.name not in skip
        ]

    def short(self, *, symmetric: bool | None = None) -> str:
        text = f"{self.method}, {len(self.blocks)} blocks"
        return text if symmetric is None else f"{text}, {'s8 sym' if symmetric else 'u8 asym'}"


def _method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def collect_ranges(
    fp32_path: Path,
    prefixes: PrefixSet,
    method: str,
    cache_path: Path,
    *,
    symmetric: bool = False,
    percentile: float = 99.999,
    chunk: int = 8,
    on_batch: Callable[[int], None] = lambda _n: None,
) -> Path:
    """Run the calibrator over ``prefixes`` in chunks (bounded memory) and save the range cache.

    onnxruntime's histogram calibrators (entropy, percentile) print progress lines to stdout; that
    is left to the caller (a CLI with ``--json`` sends stdout elsewhere while it works).
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if method not in METHODS:
        raise QuantisationError(f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    extra = {"symmetric": symmetric} if method != "minmax" else {"symmetric": False}
    if method == "percentile":
        extra["percentile"] = percentile
    reader = PrefixReader(prefixes, batch_size=1)
    with tempfile.TemporaryDirectory(prefix="dcssa-calib-") as tmp:
        calibrator = create_calibrator(
            Path(fp32_path),
            list(CALIBRATED_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_method_enum(method),
            extra_options=extra,
        )
        n = len(reader)
        for start in range(0, n, chunk):
            reader.set_range(start, min(n, start + chunk))
            calibrator.collect_data(reader)
            on_batch(min(chunk, n - start))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache_path)
    return cache_path


class _QuantiserNotices(logging.Filter):
    """Drops what onnxruntime.quantization logs below ERROR on ONE thread.

    The quantiser logs through the root logger (``logging.warning``), e.g. "Please consider to run
    pre-processing before quantization" twice per call. Matching the records by source file and
    thread leaves every other record -- other libraries, other threads -- and the root level alone.
    """

    def __init__(self, thread: int) -> None:
        super().__init__()
        import onnxruntime.quantization as q

        self.thread = thread
        self.source = str(Path(q.__file__).parent)

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.thread == self.thread and record.pathname.startswith(self.source)
        return not own or record.levelno >= logging.ERROR


@contextlib.contextmanager
def quantiser_notices_hidden() -> Iterator[None]:
    """Within the block, the calling thread's quantiser notices are not emitted."""
    root = logging.getLogger()
    notices = _QuantiserNotices(threading.get_ident())
    root.addFilter(notices)
    try:
        yield
    finally:
        root.removeFilter(notices)


def fix_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """The lowest IR version that carries the model's opsets (onnxruntime 1.31 reads <= 13)."""
    need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(mf.IR_VERSION, need)
    return model


def quantize_int8(fp32_path: Path, out_path: Path, recipe: Int8Recipe, cache_path: Path, *,
                  symmetric: bool = False) -> dict:
    """Write the Q/DQ graph of ``recipe`` using ranges from ``cache_path``; returns a summary.

    ``symmetric``: int8 activations with zero point 0 (TensorRT) instead of uint8 (onnxruntime CPU).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    nodes = recipe.nodes(model)
    if not nodes:
        raise QuantisationError(
            f"the recipe quantises no node of {Path(fp32_path).name} (blocks: {', '.join(recipe.blocks) or 'none'})",
            path=fp32_path,
            hint=f"name blocks among: {', '.join(graph_blocks(model))}",
        )
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QDQKeepRemovableActivations": False,
             "MatMulConstBOnly": recipe.const_b_only}
    if not recipe.quantise_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(recipe.op_types)
    with tempfile.TemporaryDirectory(prefix="dcssa-q-") as tmp, quantiser_notices_hidden():
        tmp_out = Path(tmp) / "q.onnx"
        quantize_static(
            str(fp32_path),
            str(tmp_out),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.op_types),
            per_channel=recipe.per_channel,
            reduce_range=False,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            calibrate_method=_method_enum(recipe.method),
            extra_options=extra,
            calibration_cache_path=str(cache_path),
        )
        q = fix_ir_version(onnx.load(str(tmp_out)))
    q.producer_name = "dcssa-calibrate"
    q.doc_string = f"DC-SSA int8 (Q/DQ) {recipe.short(symmetric=symmetric)}"
    onnx.checker.check_model(q)
    out_path.write_bytes(q.SerializeToString())
    counts: dict[str, int] = {}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"quantised_nodes": len(nodes), "qdq_nodes": counts}


def float_nodes(model: onnx.ModelProto, recipe: Int8Recipe, ops: Sequence[str] = QUANTISED_OPS) -> list[str]:
    """Compute nodes (of ``ops``) the recipe leaves in float: the exclusions, for the record."""
    quantised = set(recipe.nodes(model))
    return [n.name for n in model.graph.node if n.op_type in ops and n.name not in quantised]

"""INT8 by NNCF's post-training quantisation (its ONNX backend), beside our own quantiser.

:mod:`.int8` quantises with onnxruntime.quantization, our range calibration and a recipe of blocks.
This module hands the same fp32 sketch encoder and the same calibration rasters (every stroke
prefix, :class:`~.calibset.PrefixSet`) to ``nncf.quantize`` and writes the Q/DQ graph it returns,
so the two can be compared on the same held-out prefixes (``benchmarks/ptq_compare.py``) and either
can make the bundle's int8 graph (``dcssa-export calibrate --quantiser nncf``).

What NNCF decides itself: where quantisers go (its hardware patterns, propagated through Concat and
pooling), their ranges (its MinMax statistics), and the bias correction of every quantised layer.
What we decide (:class:`NncfOptions`): the preset, i.e. the activation encoding of the target --
``mixed`` (asymmetric activations, the onnxruntime CPU graph) or ``performance`` (symmetric), whose
unsigned quantisers :func:`signed_activations` rewrites as int8 with zero point 0 (the TensorRT
graph, as :func:`.int8.quantize_int8` makes it with ``symmetric=True``) --, an ignored scope, and
SmoothQuant.

The ignored scope can come from an :class:`~.int8.Int8Recipe`: every node of the blocks the recipe
keeps float (and the ops :data:`.int8.ALWAYS_FLOAT_OPS`) is ignored, so NNCF quantises only inside
the recipe's blocks. The recipe's calibration method is not used: NNCF computes its own ranges.

nncf is an optional dependency (the ``nncf`` extra); it is imported only inside the functions that
need it, and the runtime package never imports this module. Note that ``import nncf`` itself
imports torch and openvino when they are installed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from dcssa.calibration.calibset import PrefixSet
from dcssa.calibration.int8 import ALWAYS_FLOAT_OPS, Int8Recipe, QuantisationError, fix_ir_version, node_block
from dcssa.calibration.options import CalibrationOptions
from dcssa.runtime.extras import require

PRESETS = ("mixed", "performance")
NNCF_REQUIREMENT = "nncf>=3.4,<4"
NNCF_HINT = f"pip install 'dcssa-rt[nncf]' (or '{NNCF_REQUIREMENT}')"


def nncf_version() -> str | None:
    """The installed nncf version, or None (without importing it: ``import nncf`` pulls in torch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nncf")
    except PackageNotFoundError:
        return None


def require_nncf():
    """``import nncf``, or a :class:`~dcssa.runtime.errors.MissingExtra` saying how to install it."""
    return require("nncf", "the nncf quantiser", hint=NNCF_HINT)


@dataclass(frozen=True)
class NncfOptions:
    """What is asked of ``nncf.quantize``; stored in the manifest with the graph it made.

    ``ignored_recipe``: the recipe whose float blocks become the ignored scope (None: NNCF places
    quantisers everywhere its patterns allow). ``smooth_quant``: SmoothQuant alphas per layer type
    (``{"matmul": 0.95, "convolution": -1}``; a negative alpha switches that type off); NNCF runs
    SmoothQuant only for ``model_type=TRANSFORMER``, so asking for it sets that model type, which
    also brings NNCF's transformer patterns (see :meth:`record`). ``subset_size``: at most this
    many calibration rasters (None: every one given). ``accuracy_control``: NNCF's
    ``quantize_with_accuracy_control`` chooses the float layers against the task objective
    (:mod:`.nncf_control`), reverting at most ``max_iterations`` groups, ranked on
    ``ranking_sketches`` held-out sketches. ``ignored_nodes``: node names NNCF leaves float besides
    the recipe's (the TensorRT graph repeats the accuracy-controlled graph's float layers this way).
    """

    preset: str = "mixed"
    fast_bias_correction: bool = True
    subset_size: int | None = None
    ignored_recipe: Int8Recipe | None = None
    smooth_quant: dict[str, float] | None = None
    target_device: str = "ANY"
    accuracy_control: bool = False
    max_iterations: int = 30
    ranking_sketches: int = CalibrationOptions.sensitivity_sketches  # --sensitivity-sketches
    ignored_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise QuantisationError(f"unknown NNCF preset {self.preset!r}", hint=f"use one of {', '.join(PRESETS)}")
        if self.smooth_quant is not None and set(self.smooth_quant) - {"matmul", "convolution"}:
            raise QuantisationError(f"unknown SmoothQuant layer types {sorted(self.smooth_quant)}",
                                    hint="give alphas for matmul and/or convolution")

    def for_target(self, *, symmetric: bool) -> NncfOptions:
        """The same options for the CPU graph (mixed) or the TensorRT graph (performance, signed)."""
        from dataclasses import replace

        return replace(self, preset="performance" if symmetric else "mixed")

    @property
    def symmetric(self) -> bool:
        return self.preset == "performance"

    def record(self) -> dict:
        """The manifest / report record (with the quantiser's name and version)."""
        d = asdict(self)
        d["ignored_recipe"] = None if self.ignored_recipe is None else self.ignored_recipe.to_dict()
        d["ignored_nodes"] = list(self.ignored_nodes)
        return {
            "quantiser": "nncf",
            "nncf_version": nncf_version(),
            **d,
            "model_type": "transformer" if self.smooth_quant else None,
            "symmetric_activations": self.symmetric,
            # NNCF cannot force signed activations: uint8 zero-point-0 quantisers are rewritten
            "signed_activations": "uint8 zero point 0 rewritten as int8 (scale x 255/127)" if self.symmetric else None,
        }

    def short(self) -> str:
        parts = [f"nncf {self.preset}"]
        parts.append("fast bias correction" if self.fast_bias_correction else "bias correction")
        if self.ignored_recipe is not None:
            parts.append(f"float blocks of a {len(self.ignored_recipe.blocks)}-block recipe ignored")
        if self.accuracy_control:
            parts.append(f"accuracy control on the task (at most {self.max_iterations} groups reverted)")
        if self.ignored_nodes:
            parts.append(f"{len(self.ignored_nodes)} more layers kept float")
        if self.smooth_quant:
            parts.append("SmoothQuant " + ", ".join(f"{k} {v:g}" for k, v in sorted(self.smooth_quant.items())))
        return ", ".join(parts)


def ignored_nodes(model: onnx.ModelProto, recipe: Int8Recipe) -> list[str]:
    """Nodes NNCF must leave float so it quantises only inside ``recipe``'s blocks.

    Every node of a block the recipe does not cover, every :data:`~.int8.ALWAYS_FLOAT_OPS` node and
    the recipe's ``exclude_nodes``. Constant nodes are left out (they compute nothing).
    """
    skip = set(recipe.exclude_nodes)
    return [
        n.name for n in model.graph.node
        if n.op_type != "Constant"
        and (not recipe.covers(node_block(n.name)) or n.op_type in ALWAYS_FLOAT_OPS or n.name in skip)
    ]


@contextlib.contextmanager
def nncf_output(nncf, quiet: bool) -> Iterator[None]:
    """NNCF's warnings and progress bars go to the *current* ``sys.stdout`` (so a CLI's ``--json``
    redirection applies: nncf's handler holds the stdout of import time), and nowhere when quiet.
    NNCF's logger is put back as it was afterwards."""
    from nncf.common.logging.logger import nncf_logger

    handlers = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    saved = [(h, h.stream) for h in handlers]
    level = nncf_logger.level
    sink = open(__import__("os").devnull, "w") if quiet else None  # noqa: SIM115 - closed below
    try:
        for h in handlers:
            h.setStream(sink or sys.stdout)
        # its INFO lines name every node it leaves unquantised (hundreds): warnings only
        nncf_logger.setLevel(logging.ERROR if quiet else logging.WARNING)
        with contextlib.redirect_stdout(sink) if sink else contextlib.nullcontext():
            yield
    finally:
        for h, stream in saved:
            h.setStream(stream)
        nncf_logger.setLevel(level)
        if sink is not None:
            sink.close()


def advanced_parameters(options: NncfOptions):
    """NNCF's advanced quantisation parameters of ``options`` (its SmoothQuant alphas)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    sq = options.smooth_quant or {}
    # NNCF's defaults (matmul 0.95, convolution off) apply only to transformer models; say them anyway
    return AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(
        convolution=sq.get("convolution", -1), matmul=sq.get("matmul", 0.95 if sq else -1)))


#: int8 scale over uint8 scale that keeps a zero-point-0 quantiser's range [0, 255 s] = [0, 127 s']
UNSIGNED_TO_SIGNED = 255.0 / 127.0


def signed_activations(model: onnx.ModelProto) -> int:
    """Re-express every unsigned symmetric activation quantiser (uint8, zero point 0) as int8 with
    zero point 0 over the same range (scale x 255/127, one bit less resolution); returns how many.

    NNCF's PERFORMANCE preset gives symmetric activations, but unsigned (uint8) ones where its
    statistics see no negative value (after a ReLU), and TensorRT takes int8 Q/DQ only. NNCF cannot be
    asked for signed activations: its hardware configurations (ANY, CPU, GPU, NPU) leave activation
    signedness free, and ``signedness_to_force=True`` is refused as incompatible with them. This is
    what onnxruntime's ``ActivationSymmetric`` int8 graph does to the same tensors (a range symmetric
    about zero). Each Q/DQ pair gets its own new scale and zero point (NNCF shares them per pair).
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    converted = 0
    for n in list(model.graph.node):
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = inits[n.input[2]]
        if zp.data_type != onnx.TensorProto.UINT8:
            continue
        z = numpy_helper.to_array(zp)
        if z.any():
            raise QuantisationError(f"{n.name}: an asymmetric uint8 activation quantiser in a symmetric graph",
                                    hint="quantise with preset performance")
        old = numpy_helper.to_array(inits[n.input[1]])
        scale = (old.astype("float64") * UNSIGNED_TO_SIGNED).astype(old.dtype)  # a 0-d array would turn float64
        pair = [n] + [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
        if len(pair) != len(consumers.get(n.output[0], [])) + 1:
            raise QuantisationError(f"{n.name}: its output feeds something other than DequantizeLinear")
        s_name, z_name = f"{n.input[1]}_signed", f"{n.input[2]}_signed"
        model.graph.initializer.extend([numpy_helper.from_array(scale, s_name),
                                        numpy_helper.from_array(z.astype("int8"), z_name)])
        for m in pair:
            m.input[1], m.input[2] = s_name, z_name
        for vi in model.graph.value_info:  # NNCF records the quantised tensor's type
            if vi.name == n.output[0]:
                vi.type.tensor_type.elem_type = onnx.TensorProto.INT8
        converted += 1
    used = {x for m in model.graph.node for x in m.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return converted


def write_qdq_graph(q: onnx.ModelProto, out_path: Path, options: NncfOptions) -> onnx.ModelProto:
    """Stamp, check (with shape inference: the types of rewritten tensors) and write NNCF's graph."""
    q = fix_ir_version(q)
    q.producer_name = "dcssa-calibrate"
    q.doc_string = f"DC-SSA int8 (Q/DQ) {options.short()}"
    onnx.checker.check_model(q, full_check=True)
    Path(out_path).write_bytes(q.SerializeToString())
    return q


def calibration_dataset(nncf, prefixes: PrefixSet, input_name: str, on_batch: Callable[[int], None]):
    """NNCF's dataset over the calibration rasters; ``on_batch`` counts each raster's first read."""
    n = len(prefixes)
    if n == 0:
        raise QuantisationError("no calibration rasters", hint="give calibration sketches with strokes")
    pulled = [0]

    def item(i: int) -> dict:
        if pulled[0] < n:
            pulled[0] += 1
            on_batch(1)
        return {input_name: prefixes.images(i, i + 1)}

    return nncf.Dataset(range(n), item)


def quantize_nncf(
    fp32_path: Path,
    out_path: Path,
    prefixes: PrefixSet,
    options: NncfOptions = NncfOptions(),
    *,
    input_name: str = "images",
    quiet: bool = True,
    on_batch: Callable[[int], None] = lambda _n: None,
) -> dict:
    """Write NNCF's Q/DQ graph of ``fp32_path`` calibrated on ``prefixes``; returns a summary.

    ``on_batch`` is called once per calibration raster NNCF reads, up to ``len(prefixes)`` calls (it
    may read rasters again after its statistics pass; those are not counted).
    """
    nncf = require_nncf()
    model = onnx.load(str(fp32_path))
    names = ignored_nodes(model, options.ignored_recipe) if options.ignored_recipe is not None else []
    names = sorted(set(names) | set(options.ignored_nodes))
    if options.ignored_recipe is not None and len(names) == sum(n.op_type != "Constant" for n in model.graph.node):
        raise QuantisationError(
            f"the recipe leaves no node of {Path(fp32_path).name} to quantise "
            f"(blocks: {', '.join(options.ignored_recipe.blocks) or 'none'})", path=fp32_path)
    dataset, n = calibration_dataset(nncf, prefixes, input_name, on_batch), len(prefixes)
    kw: dict = {}
    if options.smooth_quant:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    t0 = time.perf_counter()
    with nncf_output(nncf, quiet):
        q = nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset(options.preset),
            target_device=nncf.TargetDevice[options.target_device],
            subset_size=min(n, options.subset_size or n),
            fast_bias_correction=options.fast_bias_correction,
            # validate=False: nodes NNCF leaves out of its graph (Cast, Shape, ...) are no error to ignore
            ignored_scope=nncf.IgnoredScope(names=names, validate=False) if names else None,
            advanced_parameters=advanced_parameters(options),
            **kw,
        )
    signed = signed_activations(q) if options.symmetric else 0
    seconds = time.perf_counter() - t0
    q = write_qdq_graph(q, out_path, options)
    return {**qdq_summary(q), "ignored_nodes": len(names), "unsigned_made_signed": signed, "calibration_rasters": min(n, options.subset_size or n),
            "seconds": seconds}


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Q/DQ counts and the activation encodings (zero-point type, any non-zero zero point)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    counts: dict[str, int] = {}
    encodings: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        if n.op_type == "QuantizeLinear":
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            kind = "uint8 (no zero point)" if zp is None else onnx.TensorProto.DataType.Name(zp.data_type).lower()
            if zp is not None:
                kind += ", zero point 0" if not numpy_helper.to_array(zp).any() else ", zero point != 0"
            encodings[kind] = encodings.get(kind, 0) + 1
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantised = sum(1 for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                    and any(x in dq_out for x in n.input[:2]))
    return {"qdq_nodes": counts, "activation_quantisers": encodings, "quantised_nodes": quantised}

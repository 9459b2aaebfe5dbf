"""OpenVINO backend: the bundle's ONNX graphs compiled by OpenVINO, the fast path on Intel CPUs.

Precisions (``load(path, precision=...)``):

- ``fp32``: the fp32 graph with ``INFERENCE_PRECISION_HINT=f32``. This must be explicit: on CPUs
  with AMX, OpenVINO's default inference precision is bf16.
- ``bf16``: an *execution mode* over the fp32 graph, not a graph file: AMX / AVX512-BF16 kernels
  everywhere except the op scopes the graph's spec lists in ``f32_scopes`` (for DC-SSA the first
  convolution, measured to hurt the rankings in bf16), which run in f32. OpenVINO's per-node ``disable_fp16_compression`` marks
  are not honoured by every CPU kernel (fully connected layers ignore them), so the graph is split
  into segments compiled with their own precision and run back to back. Refused with a clear
  error on CPUs without native bf16.
- ``int8``: the bundle's Q/DQ graph (written by ``dcssa-export calibrate``); OpenVINO fuses the
  Q/DQ pairs into int8 kernels (VNNI / AMX-INT8), float parts in f32.

Compiled models are cached in ``cache_dir/openvino`` (the Retriever passes ``BUNDLE/.cache``), so
a restart imports the compiled blobs instead of recompiling. ``openvino`` is imported lazily:
the rest of the runtime never needs it (``pip install dcssa-rt[openvino]``).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..contract import manifest as mf
from ..errors import BackendError
from ..extras import require
from .base import REEXPORT_HINT, Backend, Runner, backend_error, spec_for

DEVICE_ENV = "DCSSA_OPENVINO_DEVICE"
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # INFERENCE_PRECISION_HINT per precision


def _ov():
    return require("openvino", "the openvino backend", hint="pip install 'dcssa-rt[openvino]' (or pick --backend ort-cpu)")


@functools.lru_cache(maxsize=1)
def _core():
    """One OpenVINO Core per process (device discovery is slow-ish; plugins are shared anyway)."""
    return _ov().Core()


def device_capabilities(device: str = "CPU") -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of ``device`` (e.g. BF16, INT8, FP32). Tests patch this."""
    return [str(c) for c in _core().get_property(device, "OPTIMIZATION_CAPABILITIES")]


def _cpuinfo(field: str) -> str:
    """The first ``field`` line of /proc/cpuinfo, '' when unknown (not Linux, no such field)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU vendor id from /proc/cpuinfo (GenuineIntel, AuthenticAMD ...), '' when unknown."""
    return _cpuinfo("vendor_id")


#: Key-sequence lengths the snippet probe runs (the stroke head's K/V cache grows by one per stroke).
SNIPPET_PROBE_KEYS = range(1, 49)


@functools.lru_cache(maxsize=None)
def snippets_trusted(device: str = "CPU", threads: int | None = None) -> bool:
    """Whether OpenVINO's JIT "snippets" subgraphs give the exact maths on this CPU: found by running one.

    OpenVINO 2026.4's snippet for the MatMul-Softmax-MatMul attention pattern returns wrong numbers
    once the key sequence is long enough (the stroke head's K/V cache after some strokes): from 8 keys
    on an AVX2-only AMD EPYC (embeddings off by 0.1), from 16 on an AVX-512 AMD EPYC (Zen 4) and on an
    AMX Xeon VM (max error 7 to 19), while other AVX-512/AMX Xeons gave the exact maths. No CPU flag
    tells them apart, so the backend compiles that pattern once (about 80 ms, once per process) with
    snippets on and compares it with numpy at every length in :data:`SNIPPET_PROBE_KEYS`. With snippets
    disabled the same ops run as plain MatMul/Softmax kernels: exact and, measured, no slower on our
    encoders. A probe that cannot run counts as untrusted."""
    ov = _ov()
    ops = require("openvino.opset13", "the openvino backend")
    d = 64
    q, k, v = (ops.parameter(shape, np.float32, name=n) for n, shape in (("q", [1, d]), ("K", [-1, d]), ("V", [-1, d])))
    scores = ops.multiply(ops.matmul(q, k, False, True), ops.constant(np.float32(1 / np.sqrt(d))))
    model = ov.Model([ops.matmul(ops.softmax(scores, -1), v, False, False)], [q, k, v], "snippet_probe")
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    rng = np.random.default_rng(0)
    try:
        request = _core().compile_model(model, device, cfg).create_infer_request()
        for n in SNIPPET_PROBE_KEYS:
            qa, ka, va = (rng.standard_normal(shape).astype(np.float32) for shape in ((1, d), (n, d), (n, d)))
            s = (qa.astype(np.float64) @ ka.T.astype(np.float64)) / np.sqrt(d)
            p = np.exp(s - s.max())
            want = (p / p.sum()) @ va
            got = request.infer({"q": qa, "K": ka, "V": va})[0]
            if not np.abs(got - want).max() <= 1e-4:
                return False
    except Exception:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors; a broken probe proves nothing
        return False
    return True


def in_scope(name: str, scope: str) -> bool:
    """Whether an op named ``name`` lies in module scope ``scope`` (``/trunk/MaxPool`` is not
    ``/trunk/MaxPool_1``, ``blocks.1`` not ``blocks.10``)."""
    return name == scope or name.startswith(scope.rstrip("/") + "/")


_FREE = ("Parameter", "Constant", "Result")


def _valid_cuts(ops) -> list[bool]:
    """For each op (topological order): whether its single output is all that later ops need of it
    and everything before it (the graph's input included), so the graph can be split right after it."""
    pos = {op.get_name(): i for i, op in enumerate(ops)}
    last_use = [-1] * len(ops)
    param_last = -1
    for j, op in enumerate(ops):
        for value in op.input_values():
            src = value.get_node()
            kind = src.get_type_name()
            if kind == "Parameter":
                param_last = max(param_last, j)
            elif kind != "Constant" and src.get_name() in pos:
                i = pos[src.get_name()]
                last_use[i] = max(last_use[i], j)
    names = [op.get_friendly_name() for op in ops]
    counts = {n: names.count(n) for n in set(names)}
    out, reach = [], param_last  # the furthest use of anything strictly before position p
    for p, op in enumerate(ops):
        out.append(reach <= p and len(op.outputs()) == 1 and counts[names[p]] == 1)
        reach = max(reach, last_use[p])
    return out


def bf16_plan(model, f32_scopes: Sequence[str], tail: str = "bf16") -> tuple[list[str], list[str]]:
    """(cuts, precision of each of the len(cuts) + 1 segments) for running ``model`` in bf16 mode.

    Ops in any of ``f32_scopes`` (module scopes such as ``/trunk/Conv2d_1a_3x3``, anywhere in the
    graph) run in f32, the others in ``tail``; ops without a scope (``Identity_3``) go with the op
    before them. A change of precision becomes a cut after the last op of a run; where that op is
    not a clean boundary (a residual reads past it), the cut moves to the next one that is, and the
    ops in between keep the earlier precision. A graph with none of the scopes is one ``tail`` segment.
    """
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in _FREE]
    scopes = [s for s in f32_scopes if s]
    marks: list[str | None] = []
    for op in ops:
        name = op.get_friendly_name()
        if any(in_scope(name, sc) for sc in scopes):
            marks.append("fp32")
        else:
            marks.append(tail if name.startswith("/") else None)
    if "fp32" not in marks:
        return [], [tail]
    first = next(m for m in marks if m is not None)
    precs, cur = [], first
    for m in marks:
        cur = m or cur
        precs.append(cur)
    valid = _valid_cuts(ops)
    cuts, precisions = [], [precs[0]]
    i = 0
    while i < len(ops) - 1:
        if precs[i + 1] == precisions[-1]:
            i += 1
            continue
        p = i
        while p < len(ops) - 1 and not valid[p]:
            p += 1
        if p >= len(ops) - 1:
            break  # no clean boundary left: the rest keeps the current precision
        nxt = precs[p + 1]
        if nxt != precisions[-1]:
            cuts.append(ops[p].get_friendly_name())
            precisions.append(nxt)
        i = p + 1
    return cuts, precisions


def split_model(model, cuts: Sequence[str]) -> list:
    """The segments input -> cuts[0] -> cuts[1] ... -> outputs of ``model`` as separate models."""
    ov = _ov()

    def find(m, name):
        return next(op for op in m.get_ordered_ops() if op.get_friendly_name() == name)

    names = [o.get_any_name() for o in model.outputs]
    parts, prev = [], None
    for i in range(len(cuts) + 1):
        m = model.clone()
        params = m.get_parameters()
        if prev is not None:
            boundary = find(m, prev).output(0)
            param = ov.opset13.parameter(boundary.get_partial_shape(), boundary.get_element_type(), name=f"cut{i}")
            for target in list(boundary.get_target_inputs()):
                target.replace_source_output(param.output(0))
            params = [param]
        if i < len(cuts):
            parts.append(ov.Model([find(m, cuts[i]).output(0)], params, f"segment{i}"))
            prev = cuts[i]
        else:
            last = ov.Model([r.input_value(0) for r in m.get_results()], params, f"segment{i}")
            for out, name in zip(last.outputs, names):
                out.set_names({name})
            parts.append(last)
    return parts


def _static_batch1(model) -> tuple[int, ...] | None:
    """(1, ...) for a one-input graph whose only dynamic dim is the batch (the sketch encoder)."""
    if len(model.inputs) != 1:
        return None
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
        return None
    return (1, *(d.get_length() for d in list(shape)[1:]))


class OpenVINORunner(Runner):
    """A chain of graph segments (one, or f32 first conv + bf16 rest), compiled per input shape.

    One-input graphs are compiled for the exact shapes they are run with (OpenVINO's CPU kernels
    are markedly faster on static shapes: the per-stroke batch-1 encoder pass is compiled at load),
    up to ``MAX_STATIC`` shapes; other shapes and multi-input graphs (the stroke head, whose cache
    grows every stroke) use one dynamic-shape compilation. Infer requests are not thread-safe and
    the server calls runners from worker threads, so each thread gets its own requests.
    """

    MAX_STATIC = 2

    def __init__(self, backend: OpenVINOBackend, parts: Sequence, precisions: Sequence[str], spec: mf.GraphSpec,
                 path: Path) -> None:
        self.backend, self.parts, self.path = backend, list(parts), path
        self.spec = spec
        self.precisions = tuple(precisions)
        self.input_names = tuple(i.get_any_name() for i in self.parts[0].inputs)
        self.output_names = tuple(o.get_any_name() for o in self.parts[-1].outputs)
        self._chains: dict[tuple | None, list] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._specialise = _static_batch1(self.parts[0]) is not None
        self._compile_chain(_static_batch1(self.parts[0]))  # compile now what a live session runs

    @property
    def stages(self) -> list:
        """The compiled segments of the first compilation (for inspection)."""
        return next(iter(self._chains.values()))

    def _compiled_for(self, shape: tuple) -> tuple[tuple | None, list]:
        if self._specialise:
            if shape in self._chains:
                return shape, self._chains[shape]
            if sum(k is not None for k in self._chains) < self.MAX_STATIC:
                return shape, self._compile_chain(shape)
        return None, self._chains[None] if None in self._chains else self._compile_chain(None)

    def _compile_chain(self, shape: tuple | None) -> list:
        """Compile the chain for input ``shape`` (None: dynamic), once."""
        with self._lock:
            if shape not in self._chains:
                compiled, cur = [], shape
                for part, prec in zip(self.parts, self.precisions):
                    if cur is not None:
                        part = part.clone()
                        try:
                            part.reshape({part.inputs[0]: list(cur)})
                        except Exception as exc:  # noqa: BLE001 - OpenVINO's shape inference errors
                            raise BackendError(
                                f"{self.name}: input of shape {shape} does not fit the graph "
                                f"({str(exc).strip().splitlines()[0][:200]})",
                                path=self.path, hint=f"the graph takes {self.parts[0].inputs[0].get_partial_shape()}",
                            ) from None
                        cur = tuple(d.get_length() for d in part.outputs[0].get_partial_shape())
                    compiled.append(self.backend._compile(part, prec, self.path))
                self._chains[shape] = compiled
            return self._chains[shape]

    def _requests(self, key: tuple | None, chain: list) -> list:
        per_thread = getattr(self._local, "requests", None)
        if per_thread is None:
            per_thread = self._local.requests = {}
        if key not in per_thread:
            per_thread[key] = [c.create_infer_request() for c in chain]
        return per_thread[key]

    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        data = {n: np.ascontiguousarray(feeds[n], dtype=np.float32) for n in self.input_names}
        key, chain = self._compiled_for(tuple(data[self.input_names[0]].shape))
        reqs = self._requests(key, chain)
        for req in reqs[:-1]:  # segment boundary: one tensor, handed on in f32
            out = req.infer(data)
            data = [np.asarray(next(iter(out.values())), dtype=np.float32)]
        out = reqs[-1].infer(data)
        return {n: np.array(out[o], dtype=np.float32, copy=True) for n, o in zip(self.output_names, chain[-1].outputs)}


class OpenVINOBackend(Backend):
    """OpenVINO on ``CPU`` by default; ``device`` (or $DCSSA_OPENVINO_DEVICE) picks GPU / NPU."""

    name = "openvino"
    precisions = ("int8", "bf16", "fp32")
    execution_precisions = ("bf16",)

    def __init__(self, *, threads: int | None = None, cache_dir: Path | None = None, device: str | None = None,
                 bf16_f32_scopes: Sequence[str] | None = None) -> None:
        """``bf16_f32_scopes`` overrides the f32 scopes the graphs' specs list for bf16 mode."""
        ov = _ov()
        self.bf16_f32_scopes = None if bf16_f32_scopes is None else tuple(bf16_f32_scopes)
        self.core = _core()
        self.version = ov.get_version()
        self.device = (device or os.environ.get(DEVICE_ENV) or "CPU").upper()
        have = self.core.available_devices
        if not any(d == self.device or d.startswith(self.device + ".") for d in have):
            raise BackendError(
                f"OpenVINO has no {self.device} device here (available: {', '.join(have) or 'none'})",
                hint=f"unset ${DEVICE_ENV} or set it to one of {', '.join(have)}",
            )
        self.threads = threads
        self.cache_dir = self._cache_folder(cache_dir)
        self.snippets = snippets_trusted(self.device, threads) if self.device == "CPU" else None

    @staticmethod
    def _cache_folder(cache_dir: Path | None) -> Path | None:
        """``cache_dir/openvino`` if it can be created; a read-only bundle just means no cache."""
        if cache_dir is None:
            return None
        folder = Path(cache_dir) / "openvino"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return folder if os.access(folder, os.W_OK) else None

    @classmethod
    def available(cls) -> bool:
        try:
            return "CPU" in _core().available_devices
        except Exception:  # noqa: BLE001 - not installed or broken: not available
            return False

    @staticmethod
    def preferred() -> bool:
        """Whether ``auto`` should pick OpenVINO over onnxruntime for every precision (Intel CPUs)."""
        return cpu_vendor() == "GenuineIntel"

    def check_precision(self, precision: str) -> None:
        """Raise BackendError when this device cannot execute ``precision`` natively."""
        if precision not in self.precisions:
            raise BackendError(f"the openvino backend runs {', '.join(self.precisions)}, not {precision!r}",
                               hint="pick one of those with --precision")
        if precision == "bf16":
            caps = device_capabilities(self.device)
            if "BF16" not in caps:
                raise BackendError(
                    f"this {self.device} has no native bf16 (OpenVINO capabilities: {', '.join(caps)}); "
                    "bf16 needs AMX or AVX512-BF16 (Intel Xeon 3rd gen Cooper Lake / 4th gen Sapphire Rapids or newer)",
                    hint="use --precision fp32, or int8 if the bundle has it (`dcssa-export calibrate`)",
                )

    def config(self, precision: str) -> dict:
        """compile_model properties for ``precision``."""
        cfg = {"PERFORMANCE_HINT": "LATENCY"}
        if self.device == "CPU":
            cfg["INFERENCE_PRECISION_HINT"] = HINTS[precision]
            if not self.snippets:
                cfg["SNIPPETS_MODE"] = "DISABLE"
            if self.threads:
                cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        elif precision == "fp32":  # GPU/NPU default to f16 inference: fp32 means f32
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
        if self.cache_dir is not None:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def _compile(self, model, precision: str, path: Path):
        try:
            return self.core.compile_model(model, self.device, self.config(precision))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
            raise backend_error(f"OpenVINO could not compile the graph for {self.device}", exc, path=path,
                                hint=f"{REEXPORT_HINT}, or use --backend ort-cpu") from None

    def load(self, path: Path, spec: mf.GraphSpec | None = None, *, precision: str | None = None) -> Runner:
        """Compile one graph file. ``precision`` is an execution mode (``bf16``) over an fp32 file;
        None runs the file as it is (fp32, or the int8 Q/DQ graph)."""
        path, spec = Path(path), spec_for(path, spec)
        if not path.is_file():
            raise BackendError("graph file not found", path=path, hint="re-export the bundle with dcssa-export")
        mode = precision or "fp32"
        self.check_precision(mode)
        try:
            model = self.core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
            raise backend_error("OpenVINO could not read the graph", exc, path=path, hint=REEXPORT_HINT) from None
        if mode != "bf16":  # fp32, or the int8 Q/DQ file as it is
            return OpenVINORunner(self, [model], [mode], spec, path)
        scopes = spec.f32_scopes if self.bf16_f32_scopes is None else self.bf16_f32_scopes
        cuts, precisions = bf16_plan(model, scopes)
        parts = split_model(model, cuts) if cuts else [model]
        return OpenVINORunner(self, parts, precisions, spec, path)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "openvino": self.version, "threads": self.threads,
                "snippets": self.snippets, "cache": None if self.cache_dir is None else str(self.cache_dir)}

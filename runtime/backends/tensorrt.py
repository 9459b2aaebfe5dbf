"""Native TensorRT backend: serialized engines from the bundle, run with buffers allocated once.

Engines are built on the GPU box by ``dcssa-export engines BUNDLE`` (one per graph and precision,
from the precision-typed ONNX graphs) and recorded in ``manifest["engines"]`` with the TensorRT
version, GPU name and compute capability they were built with. An engine only runs on the TensorRT
build and GPU it was made for, so loading compares that record with this machine first and refuses
a mismatch with the command that rebuilds it.

The runner follows the TensorRT 10/11 named-tensor API: ``set_input_shape`` per input,
``set_tensor_address`` once per tensor (buffers never move), ``execute_async_v3`` on one stream.
Device buffers and pinned host buffers are sized once from the optimisation profile's maximum
shapes (:func:`plan_buffers`). For the stroke head, the K/V cache lives on the device between
strokes: each call checks the host cache it is given against a mirror of what the device holds
and uploads only the rows the device lacks (none, in a live session), then appends the new
key/value row on the device.

``tensorrt`` and the CUDA bindings are imported lazily: the rest of the runtime never needs them.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import manifest as mf
from ..errors import BackendError, MissingExtra
from ..extras import require
from .base import Backend, Runner, spec_for

if TYPE_CHECKING:
    from ..contract.bundle import Bundle

ALIGN = 256  # bytes; CUDA allocations and TensorRT tensor addresses


def trt_major(trt) -> int:
    """TensorRT's major version (``trt.__version__`` "10.3.0.30" -> 10): the version guards key on it."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


_LOGGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tensorrt module -> its one logger


def shared_logger(trt, *, verbose: bool = False):
    """One ``trt.Logger`` per process (TensorRT keeps the first logger it is given and warns about any
    other); ``verbose`` sets its level for what follows (the builder's log)."""
    logger = _LOGGERS.get(trt)
    if logger is None:
        logger = _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    logger.min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return logger


def numpy_dtype(trt, dtype, name: str, path: Path | None = None) -> np.dtype:
    """The numpy type of an engine tensor; BackendError for types numpy lacks (bf16, fp8, fp4, int4)
    instead of ``trt.nptype``'s bare TypeError."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise BackendError(f"engine tensor {name!r} has TensorRT type {getattr(dtype, 'name', dtype)}, which numpy "
                           "cannot hold: the runtime feeds and reads float32/int tensors", path=path,
                           hint="build the engine from the bundle's graphs (their I/O is float32 at every "
                                "precision): `dcssa-export engines BUNDLE`") from None


def rebuild_hint(bundle: Path | str, precision: str | None = None) -> str:
    prec = f" --precision {precision}" if precision and precision != "fp32" else ""
    return f"rebuild the engines on this machine: `dcssa-export engines {bundle}{prec}`"


# -- engine metadata -----------------------------------------------------------------------------


def local_metadata(trt_version: str, device: Mapping[str, str]) -> dict:
    return {"tensorrt": trt_version, "gpu": device["name"], "compute_capability": device["compute_capability"]}


def _version_ok(built: str, local: str, compatible: bool) -> bool:
    """An engine loads on the TensorRT that built it; a version-compatible one also on a later release
    of the same major."""
    if built == local:
        return True
    if not compatible:
        return False
    try:
        b, h = (tuple(int(x) for x in v.split(".")[:3]) for v in (built, local))
    except ValueError:
        return False
    return b[0] == h[0] and h >= b


def check_engine_metadata(recorded: Mapping, local: Mapping, *, bundle: Path | str, precision: str | None = None,
                          engine: str | None = None) -> list[str]:
    """Refuse an engine built with another TensorRT version or compute capability; returns notes
    (another GPU model of the same compute capability: it runs, maybe tuned less well).

    TensorRT engines are not portable: another TensorRT cannot deserialize them (unless built
    version-compatible, then a later release of the same major can), and kernels built for one
    compute capability do not run on another. GPUs of one compute capability (H100 PCIe and SXM,
    say) run each other's engines; the kernels were timed on the other one.
    """
    problems, notes = [], []
    for key, what in (("tensorrt", "TensorRT"), ("compute_capability", "compute capability")):
        want, have = recorded.get(key), local.get(key)
        if want is None:
            problems.append(f"the manifest does not record the {what} it was built with")
        elif key == "tensorrt" and _version_ok(str(want), str(have), bool(recorded.get("version_compatible"))):
            continue
        elif str(want) != str(have):
            problems.append(f"built for {what} {want}, this machine has {have}")
    if recorded.get("gpu") not in (None, local.get("gpu")) and not problems:
        notes.append(f"engine{f' {engine}' if engine else ''} was built on a {recorded['gpu']} and runs on a "
                     f"{local.get('gpu')} (same compute capability); {rebuild_hint(bundle, precision)} to tune it here")
    if problems:
        raise BackendError(
            f"TensorRT engine{f' {engine}' if engine else ''} cannot run here: {'; '.join(problems)}",
            path=bundle,
            hint=rebuild_hint(bundle, precision),
        )
    return notes


def find_engine(manifest: Mapping, onnx_file: str) -> tuple[str, str, dict] | None:
    """(graph, precision, engine entry) of the engine built from bundle file ``onnx_file``."""
    for graph, per in manifest.get("engines", {}).get("graphs", {}).items():
        for precision, entry in per.items():
            if onnx_file in (entry.get("graph_file"), entry.get("onnx")):
                return graph, precision, entry
    return None


# -- buffer planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    """One I/O tensor's buffer: its largest shape under the profile and the bytes reserved for it."""

    name: str
    is_input: bool
    dtype: np.dtype
    max_shape: tuple[int, ...]
    nbytes: int  # rounded up to ALIGN


def _aligned(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)


def plan_buffers(
    tensors: Mapping[str, tuple[bool, np.dtype, tuple[int, ...]]],
    profile_max: Mapping[str, tuple[int, ...]],
    output_max: Mapping[str, tuple[int, ...]],
) -> dict[str, TensorPlan]:
    """Size every buffer once: inputs from the profile's max shapes, outputs from the shapes the
    engine reports for those inputs. ``tensors``: name -> (is_input, dtype, engine shape with -1)."""
    plan = {}
    for name, (is_input, dtype, shape) in tensors.items():
        if is_input:
            if name not in profile_max:
                if any(d < 0 for d in shape):
                    raise BackendError(f"input {name!r} has dynamic shape {shape} but no optimisation profile",
                                       hint="rebuild the engine with `dcssa-export engines`")
                max_shape = tuple(shape)
            else:
                max_shape = tuple(profile_max[name])
        else:
            max_shape = tuple(output_max.get(name, shape))
            if any(d < 0 for d in max_shape):
                raise BackendError(f"output {name!r} has no bounded shape {max_shape}", hint="rebuild the engine")
        dt = np.dtype(dtype)
        count = int(np.prod(max_shape, dtype=np.int64)) if max_shape else 1
        plan[name] = TensorPlan(name, is_input, dt, max_shape, _aligned(count * dt.itemsize))
    return plan


def check_shape(name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...], label: str) -> None:
    """An input shape must lie inside the engine's optimisation profile."""
    if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
        hint = "rebuild the engines with larger limits (`dcssa-export engines --max-batch/--max-strokes`)"
        if len(shape) == 4 and len(hi) == 4 and lo[2] != hi[2] and any(s > b for s, b in zip(shape[2:], hi[2:])):
            hint = (f"a photo of {shape[3]}x{shape[2]} after resizing is wider or taller than the engine's "
                    f"{hi[3]}x{hi[2]} limit (aspect ratio over {max(hi[2:]) / min(lo[2:]):.1f}:1): crop it, or "
                    "rebuild with a larger `dcssa-export engines --photo-max-side`")
        raise BackendError(
            f"{label}: input {name!r} of shape {tuple(shape)} is outside the engine's profile {tuple(lo)}..{tuple(hi)}",
            hint=hint,
        )


# -- backend -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _probe() -> BackendError | MissingExtra | None:
    """Why the tensorrt backend cannot run here (None when it can); asked once per process."""
    try:
        TensorRTBackend.unavailable_reason()
    except (BackendError, MissingExtra) as exc:
        return exc
    return None


def _trt():
    return require("tensorrt", "the tensorrt backend",
                   hint="on a GPU box: pip install tensorrt (JetPack ships it); or use --backend ort-trt / ort-cpu")


class TensorRTBackend(Backend):
    """Runs the engines recorded in a bundle's manifest (see :func:`find_engine`)."""

    name = "tensorrt"
    precisions = ("int8", "fp16", "fp32")

    def __init__(self, *, cuda_graphs: bool = False) -> None:
        from .cuda_memory import cuda_api

        self.trt = _trt()
        self.cuda = cuda_api()
        self.device = self.cuda.device()
        self.logger = shared_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        self.local = local_metadata(self.trt.__version__, self.device)
        #: replay the sketch encoder's execution as a CUDA graph per input shape (off until measured:
        #: gpu-check's cuda-graphs stage times it against plain launches)
        self.cuda_graphs = cuda_graphs
        self.notes: list[str] = []
        self._compatible: set[Path] = set()

    @classmethod
    def available(cls) -> bool:
        return _probe() is None

    @staticmethod
    def unavailable_reason() -> None:
        """Raise BackendError (or MissingExtra) saying why this backend cannot run here; return when it can."""
        from .cuda_memory import cuda_api

        _trt()
        cuda_api()

    def artifact(self, bundle: Bundle, name: str, precision: str) -> Path:
        """The engine built from the bundle's ``name``/``precision`` graph, checked for this GPU."""
        graph_file = bundle.graph_entry(name, precision)["file"]
        found = find_engine(bundle.manifest, graph_file)
        if found is None:
            raise BackendError(f"no TensorRT engine was built from {graph_file}", path=bundle.path,
                               hint=rebuild_hint(bundle.path, precision))
        _graph, built_precision, entry = found
        self.notes += check_engine_metadata(bundle.manifest["engines"], self.local, bundle=bundle.path,
                                            precision=built_precision, engine=entry["file"])
        path = bundle.verified_file(entry["file"])  # sha256 checked
        if entry.get("version_compatible"):
            self._compatible.add(Path(path))
        return path

    def load(self, path: Path, spec: mf.GraphSpec | None = None, *, precision: str | None = None) -> Runner:
        """Deserialize an engine file (``artifact`` finds a bundle's); ONNX files are not engines."""
        path, spec = Path(path), spec_for(path, spec)
        if path.suffix not in (".engine", ".plan"):
            raise BackendError("the tensorrt backend loads serialized engines, not ONNX graphs", path=path,
                               hint=rebuild_hint(path.parent))
        if precision not in (None, "fp32"):
            raise BackendError(f"tensorrt has no {precision} execution mode: the engine's own types decide", path=path)
        # a version-compatible plan carries its own lean runtime: host code TensorRT runs only when allowed
        if path in self._compatible or getattr(self.runtime, "engine_host_code_allowed", False):
            self.runtime.engine_host_code_allowed = path in self._compatible
        return TensorRTRunner(self, path.read_bytes(), spec, path)

    def describe(self) -> dict:
        return {"backend": self.name, **self.local, "cuda": self.cuda.name, "notes": self.notes}


def per_shape_memory(trt, engine, spec: mf.GraphSpec) -> bool:
    """Whether to size the context's scratch memory per input shape instead of for the profile's largest:
    the photo encoder (its profile spans 1 x 299^2 .. 8 x 896^2, GBs at the top, which an Orin cannot
    spare for a shape it rarely sees). Needs TensorRT 10.1+ (USER_MANAGED, update_device_memory_size_for_shapes)."""
    return (spec.name == mf.PHOTO_ENCODER and hasattr(trt, "ExecutionContextAllocationStrategy")
            and hasattr(trt.ExecutionContextAllocationStrategy, "USER_MANAGED")
            and hasattr(getattr(trt, "IExecutionContext", None), "update_device_memory_size_for_shapes"))


class TensorRTRunner(Runner):
    """One engine, one execution context, one stream, buffers sized once: one call at a time.

    TensorRT allows concurrent inference only with one execution context per thread, and the
    staging buffers and the device K/V mirror are shared, so the runner declares itself not
    thread-safe and the Retriever serialises it (:class:`~.base.SerializedRunner`). Calls may still
    come from different threads one after another (a server's batcher and worker threads): every
    call makes the CUDA context current on its own thread, once (:meth:`CudaApi.activate`).
    """

    thread_safe = False

    def __init__(self, backend: TensorRTBackend, blob: bytes, spec: mf.GraphSpec, path: Path):
        trt, cuda = backend.trt, backend.cuda
        self.spec, self.cuda, self.path = spec, cuda, path
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.stream: int | None = None
        self.scratch: tuple[int, int] | None = None  # (pointer, bytes) of per-shape context memory
        self.graphs: dict[tuple, int | None] = {}  # input shapes -> CUDA graph (None: seen once, not captured)
        with cuda.activate():
            self.engine = backend.runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise BackendError("TensorRT could not deserialize the engine", path=path,
                                   hint=rebuild_hint(path.parent))
            self.per_shape = per_shape_memory(trt, self.engine, spec)
            self.context = (self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                            if self.per_shape else self.engine.create_execution_context())
            if self.context is None:
                raise BackendError("TensorRT could not create an execution context (out of GPU memory?)", path=path,
                                   hint="free GPU memory (other processes), or rebuild with a smaller --max-batch")
            self.stream = cuda.stream()
            self._setup(trt, cuda, spec)
        # capture only a stateless graph with TensorRT's own memory: the K/V append and the per-shape
        # scratch buffer change between calls, which a replayed graph would not see
        self.use_graphs = backend.cuda_graphs and not self.kv and not self.per_shape

    def _setup(self, trt, cuda, spec: mf.GraphSpec) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        tensors, self.profile = {}, {}
        for n in names:
            is_input = self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
            dtype = numpy_dtype(trt, self.engine.get_tensor_dtype(n), n, self.path)
            tensors[n] = (is_input, dtype, tuple(self.engine.get_tensor_shape(n)))
            if is_input and any(d < 0 for d in tensors[n][2]):
                lo, _opt, hi = self.engine.get_tensor_profile_shape(n, 0)
                self.profile[n] = (tuple(lo), tuple(hi))
        for n, (lo, hi) in self.profile.items():
            self._set_shape(n, hi)
        batched = [hi[0] for n, (lo, hi) in self.profile.items() if n not in spec.state and len(hi) > 1]
        self.max_batch = min(batched) if batched else None
        out_max = {n: tuple(self.context.get_tensor_shape(n)) for n, t in tensors.items() if not t[0]}
        self.plan = plan_buffers(tensors, {n: hi for n, (lo, hi) in self.profile.items()}, out_max)
        self.input_names = tuple(n for n in names if tensors[n][0])
        self.output_names = tuple(n for n in names if not tensors[n][0])
        for n, p in self.plan.items():
            self.device[n] = cuda.malloc(p.nbytes)
            self.host[n] = cuda.pinned(p.nbytes)
        for n, ptr in self.device.items():
            if not self.context.set_tensor_address(n, ptr):
                raise BackendError(f"{self.name}: TensorRT refused the device address of tensor {n!r}", path=self.path,
                                   hint=rebuild_hint(self.path.parent))
        # device-resident caches (the stroke head's K/V): the spec names each cache input and its row
        self.kv = {k: v for k, v in spec.state.items() if k in self.plan and v in self.plan}
        self.mirror = {k: np.zeros(self.plan[k].max_shape, self.plan[k].dtype) for k in self.kv}
        self.rows = {k: 0 for k in self.kv}

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, tuple(shape)):
            raise BackendError(f"{self.name}: TensorRT refused shape {tuple(shape)} for input {name!r}",
                               path=self.path, hint=rebuild_hint(self.path.parent))

    def _size_scratch(self) -> None:
        """Per-shape context memory: grow the buffer when the current shapes need more, hand it over."""
        need = int(self.context.update_device_memory_size_for_shapes())
        if self.scratch is None or self.scratch[1] < need:
            if self.scratch is not None:
                self.cuda.free(self.scratch[0])
            self.scratch = (self.cuda.malloc(_aligned(need)), _aligned(need))
        self.context.set_device_memory(self.scratch[0], self.scratch[1])

    def _upload_cache(self, name: str, past: np.ndarray) -> None:
        """Upload only the rows of ``past`` the device copy does not already hold."""
        t = len(past)
        held = min(self.rows[name], t)
        mirror = self.mirror[name]
        same = held
        if held:
            diff = np.nonzero(np.any(mirror[:held] != past[:held], axis=1))[0]
            same = int(diff[0]) if len(diff) else held
        if same < t:
            row = past.strides[0]
            staging = self.host[name][same * row : t * row]
            staging[:] = np.ascontiguousarray(past[same:t]).view(np.uint8).reshape(-1)
            self.cuda.h2d(self.device[name] + same * row, staging, self.stream)
            mirror[same:t] = past[same:t]
        self.rows[name] = t

    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.cuda.activate():  # once per call: the copies inside do not switch contexts again
            return self._run_active(feeds)

    def _stage_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        for n in self.input_names:
            p = self.plan[n]
            x = np.ascontiguousarray(feeds[n], dtype=p.dtype)
            if n in self.profile:
                check_shape(n, x.shape, *self.profile[n], self.name)
                self._set_shape(n, x.shape)
            if n in self.kv:
                self._upload_cache(n, x)
                continue
            view = self.host[n][: x.nbytes]
            view[:] = x.view(np.uint8).reshape(-1)
            self.cuda.h2d(self.device[n], view, self.stream)
        if self.per_shape:
            self._size_scratch()

    def _execute(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """``execute_async_v3``, or the CUDA graph of these input shapes: captured on the second call with
        them (the first lets TensorRT do its shape-dependent set-up outside the capture), replayed after."""
        if not self.use_graphs:
            return self.context.execute_async_v3(self.stream)
        key = tuple(np.shape(feeds[n]) for n in self.input_names)
        graph = self.graphs.get(key, "new")
        if graph == "new" or graph is False:
            self.graphs.setdefault(key, None)
            return self.context.execute_async_v3(self.stream)
        if graph is None:
            try:
                self.cuda.begin_capture(self.stream)
            except NotImplementedError:
                self.use_graphs = False
                return self.context.execute_async_v3(self.stream)
            ok = self.context.execute_async_v3(self.stream)
            graph = self.cuda.end_capture(self.stream)
            if not ok:
                self.cuda.destroy_graph(graph)
                self.graphs[key] = False
                return self.context.execute_async_v3(self.stream)
            self.graphs[key] = graph
        self.cuda.launch(graph, self.stream)
        return True

    def _run_active(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._stage_inputs(feeds)
        if not self._execute(feeds):
            for cache in self.kv:  # what the device holds is unknown now: upload everything next time
                self.rows[cache] = 0
            raise BackendError(f"{self.name}: TensorRT execution failed", hint="see the TensorRT log above")
        out = {}
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in self.output_names}
        for n in self.output_names:
            p = self.plan[n]
            nbytes = int(np.prod(shapes[n], dtype=np.int64)) * p.dtype.itemsize
            self.cuda.d2h(self.host[n][:nbytes], self.device[n], self.stream)
        for cache, row_out in self.kv.items():  # append the new row on the device, no host round trip
            t = self.rows[cache]
            if t < self.plan[cache].max_shape[0]:
                rb = self.plan[row_out].dtype.itemsize * int(np.prod(shapes[row_out]))
                self.cuda.d2d(self.device[cache] + t * rb, self.device[row_out], rb, self.stream)
        self.cuda.synchronize(self.stream)
        for n in self.output_names:
            p = self.plan[n]
            count = int(np.prod(shapes[n], dtype=np.int64))
            out[n] = self.host[n][: count * p.dtype.itemsize].view(p.dtype).reshape(shapes[n]).copy()
        for cache, row_out in self.kv.items():
            t = self.rows[cache]
            if t < self.plan[cache].max_shape[0]:
                self.mirror[cache][t] = out[row_out][0]
                self.rows[cache] = t + 1
        return out

    def close(self) -> None:
        """Free the device buffers, the pinned host buffers and the stream (idempotent; also run when collected)."""
        device, self.device = getattr(self, "device", {}), {}
        host, self.host = getattr(self, "host", {}), {}
        stream, self.stream = getattr(self, "stream", None), None
        scratch, self.scratch = getattr(self, "scratch", None), None
        graphs, self.graphs = [g for g in getattr(self, "graphs", {}).values() if g], {}
        if not device and not host and stream is None and scratch is None:
            return
        with self.cuda.activate():
            for graph in graphs:
                self.cuda.destroy_graph(graph)
            for ptr in [*device.values(), *([scratch[0]] if scratch else [])]:
                self.cuda.free(ptr)
            for buf in host.values():
                self.cuda.free_pinned(buf)
            if stream is not None:
                self.cuda.destroy_stream(stream)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn CUDA down already
            pass

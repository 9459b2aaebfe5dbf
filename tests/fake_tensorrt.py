"""Stand-ins for ``tensorrt`` and the CUDA bindings that RECORD calls, for wiring tests on CPU boxes.

They implement only the calls the project makes, with the signatures and return types of TensorRT
10/11's Python API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` return
bool, ``set_timing_cache`` returns bool ...). An engine here is a JSON blob naming its I/O tensors
and one of two toy computations, so a test can check *where bytes go* (staging buffers, device
addresses, the device-resident K/V cache) against plain numpy. Nothing here says anything about
TensorRT's numbers or speed.
"""

from __future__ import annotations

import contextlib
import json
import threading
from types import SimpleNamespace

import numpy as np

from dcssa.runtime.backends.cuda_memory import CudaApi

# -- CUDA: one byte heap, pointers are offsets into it -----------------------------------------------


class FakeCuda(CudaApi):
    """Device memory as one bytearray; copies run at once (in stream order, as a single stream would)."""

    name = "fake-cuda"
    BASE = 1 << 20

    def __init__(self, *, gpu: str = "Fake GPU", cc: str = "8.7") -> None:
        self.heap = bytearray()
        self.allocs: dict[int, int] = {}
        self.freed: list[int] = []
        self.streams: set[int] = set()
        self.destroyed: list[int] = []
        self.calls: list[tuple] = []
        self.pinned_live: dict[int, int] = {}
        self.capturing: dict[int, list] = {}
        self.graphs: dict[int, list] = {}
        self.launches: list[int] = []
        self.pinned_freed: list[int] = []
        self._active = threading.local()
        self.gpu, self.cc = gpu, cc

    # the context the runner must hold (per thread, like CUDA's)
    @contextlib.contextmanager
    def activate(self):
        self._active.depth = getattr(self._active, "depth", 0) + 1
        try:
            yield
        finally:
            self._active.depth -= 1

    def active(self) -> bool:
        return getattr(self._active, "depth", 0) > 0

    def _need_context(self, what: str) -> None:
        if not self.active():
            raise RuntimeError(f"{what}: invalid device context (no context current on this thread)")

    def device(self) -> dict:
        return {"index": 0, "name": self.gpu, "compute_capability": self.cc}

    def malloc(self, nbytes: int) -> int:
        self._need_context("malloc")
        ptr = self.BASE + len(self.heap)
        self.heap.extend(bytes(nbytes))
        self.allocs[ptr] = nbytes
        return ptr

    def free(self, ptr: int) -> None:
        self._need_context("free")
        self.allocs.pop(ptr)
        self.freed.append(ptr)

    def pinned(self, nbytes: int) -> np.ndarray:
        buf = np.zeros(max(1, nbytes), np.uint8)
        self.pinned_live[id(buf)] = nbytes
        return buf

    def free_pinned(self, buf: np.ndarray) -> None:
        self._need_context("free_pinned")
        self.pinned_live.pop(id(buf))
        self.pinned_freed.append(buf.nbytes)

    def stream(self) -> int:
        self._need_context("stream")
        handle = 1000 + len(self.streams) + len(self.destroyed)
        self.streams.add(handle)
        return handle

    def destroy_stream(self, stream: int) -> None:
        self._need_context("destroy_stream")
        self.streams.remove(stream)
        self.destroyed.append(stream)

    def _span(self, ptr: int, nbytes: int) -> slice:
        start = ptr - self.BASE
        owner = max((p for p in self.allocs if p <= ptr), default=None)
        if owner is None or ptr + nbytes > owner + self.allocs[owner]:
            raise RuntimeError(f"out-of-bounds device access at {ptr} (+{nbytes})")
        return slice(start, start + nbytes)

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._need_context("h2d")
        self.calls.append(("h2d", dst, src.nbytes))
        self.heap[self._span(dst, src.nbytes)] = src.tobytes()

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._need_context("d2h")
        self.calls.append(("d2h", src, dst.nbytes))
        dst.view(np.uint8).reshape(-1)[:] = np.frombuffer(bytes(self.heap[self._span(src, dst.nbytes)]), np.uint8)

    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._need_context("d2d")
        self.calls.append(("d2d", dst, nbytes))
        self.heap[self._span(dst, nbytes)] = bytes(self.heap[self._span(src, nbytes)])

    def synchronize(self, stream: int) -> None:
        self._need_context("synchronize")

    # CUDA graphs: work enqueued while a stream captures is recorded, not run; a launch runs it
    def enqueue(self, stream: int, work) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(work)
        else:
            work()

    def begin_capture(self, stream: int) -> None:
        self._need_context("begin_capture")
        self.capturing[stream] = []

    def end_capture(self, stream: int) -> int:
        self._need_context("end_capture")
        handle = 5000 + len(self.graphs)
        self.graphs[handle] = self.capturing.pop(stream)
        return handle

    def launch(self, graph: int, stream: int) -> None:
        self._need_context("launch")
        self.launches.append(graph)
        for work in self.graphs[graph]:
            work()

    def destroy_graph(self, graph: int) -> None:
        self._need_context("destroy_graph")
        self.graphs.pop(graph)

    # test helpers
    def read(self, ptr: int, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(bytes(self.heap[self._span(ptr, n)]), dtype).reshape(shape)

    def write(self, ptr: int, arr: np.ndarray) -> None:
        self.heap[self._span(ptr, arr.nbytes)] = np.ascontiguousarray(arr).tobytes()


# -- tensorrt --------------------------------------------------------------------------------------


class _Enum(SimpleNamespace):
    pass


def engine_blob(kind: str, tensors: list[dict]) -> bytes:
    """An 'engine': ``kind`` is "head" (K/V step) or "encoder"; tensors: name, input, shape, profile."""
    return json.dumps({"kind": kind, "tensors": tensors}).encode()


def head_engine(d: int = 4, max_t: int = 6) -> bytes:
    """The stroke-head step: feature 1 x d, past_keys / past_values T x d -> embedding, key, value."""
    kv = {"input": True, "shape": [-1, d], "profile": [[0, d], [2, d], [max_t, d]]}
    return engine_blob("head", [
        {"name": "feature", "input": True, "shape": [1, d]},
        {"name": "past_keys", **kv}, {"name": "past_values", **kv},
        {"name": "embedding", "input": False, "shape": [1, d]},
        {"name": "key", "input": False, "shape": [1, d]},
        {"name": "value", "input": False, "shape": [1, d]},
    ])


def head_step(feature: np.ndarray, past_keys: np.ndarray, past_values: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake head computes (numpy, on the host): a function of every cache row, so a stale
    or misplaced device row changes the result."""
    t = np.arange(1, len(past_keys) + 1, dtype=np.float32)[:, None]
    emb = feature + (t * past_keys).sum(0, keepdims=True) - (t * past_values).sum(0, keepdims=True)
    return {"embedding": emb.astype(np.float32), "key": (2 * feature + 1).astype(np.float32),
            "value": (feature - 3).astype(np.float32)}


class FakeEngine:
    def __init__(self, trt: FakeTensorRT, doc: dict) -> None:
        self.trt, self.kind = trt, doc["kind"]
        self.tensors = {t["name"]: t for t in doc["tensors"]}
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str):
        return self.trt.TensorIOMode.INPUT if self.tensors[name]["input"] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int):
        return [tuple(s) for s in self.tensors[name]["profile"]]

    def create_execution_context(self, strategy=None) -> FakeContext:
        ctx = FakeContext(self)
        ctx.strategy = strategy
        self.trt.contexts.append(ctx)
        return ctx


class FakeContext:
    """Records shapes and addresses; ``execute_async_v3`` reads inputs from and writes outputs to
    the fake device heap at the addresses it was given."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0
        self.refuse_shapes = False
        self.refuse_addresses = False
        self.fail_execution = False
        self.strategy = None
        self.device_memory: tuple[int, int] | None = None

    def update_device_memory_size_for_shapes(self) -> int:
        """Scratch bytes for the current input shapes (a toy formula: 4 bytes per input element, x3)."""
        return sum(self.engine.trt.scratch_bytes(self.shapes[n]) for n, t in self.engine.tensors.items()
                   if t["input"] and n in self.shapes)

    def set_device_memory(self, memory: int, size: int) -> None:
        self.engine.trt.cuda._span(memory, size)  # must be a live allocation that large
        self.device_memory = (memory, size)

    def set_input_shape(self, name: str, shape) -> bool:
        t = self.engine.tensors[name]
        shape = tuple(shape)
        if self.refuse_shapes or len(shape) != len(t["shape"]):
            return False
        if "profile" in t and any(s < a or s > b for s, a, b in zip(shape, t["profile"][0], t["profile"][2])):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if self.refuse_addresses:
            return False
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        t = self.engine.tensors[name]
        if t["input"]:
            return self.shapes.get(name, tuple(t["shape"]))
        if self.engine.kind == "double":  # its output has the input's shape
            return self.shapes.get("images", tuple(t["shape"]))
        return tuple(t["shape"])

    def execute_async_v3(self, stream: int) -> bool:
        cuda = self.engine.trt.cuda
        if not cuda.active():
            raise RuntimeError("execute_async_v3: invalid device context")
        if self.strategy is not None and (self.device_memory is None
                                          or self.device_memory[1] < self.update_device_memory_size_for_shapes()):
            raise RuntimeError("execute_async_v3: USER_MANAGED context without enough device memory")
        if self.fail_execution:
            return False
        shapes = {n: self.get_tensor_shape(n) for n in self.engine.tensors}

        def work() -> None:  # reads the device at run time: a replayed graph sees the new inputs
            self.executions += 1
            ins = {n: cuda.read(self.addresses[n], shapes[n]) for n, t in self.engine.tensors.items() if t["input"]}
            if self.engine.kind == "head":
                outs = head_step(**ins)
            elif self.engine.kind == "double":  # images -> features = 2 x images
                outs = {n: 2 * ins["images"] for n, t in self.engine.tensors.items() if not t["input"]}
            else:
                outs = {}
            for n, arr in outs.items():
                cuda.write(self.addresses[n], arr)

        cuda.enqueue(stream, work)
        return True


class FakeTensorRT:
    """A ``tensorrt`` module: the runtime side (Runtime, engines) and the builder side."""

    def __init__(self, cuda: FakeCuda | None = None, *, strongly_typed: bool = True, explicit_batch: bool = True,
                 foreign_cache: bytes | None = None, version: str = "10.3.0", timing_cache: bool = True) -> None:
        self.__version__ = version
        self.timing_cache = timing_cache
        self.cuda = cuda or FakeCuda()
        self.contexts: list[FakeContext] = []
        flags = {}
        if explicit_batch:
            flags["EXPLICIT_BATCH"] = 0
        if strongly_typed:
            flags["STRONGLY_TYPED"] = 1
        self.NetworkDefinitionCreationFlag = _Enum(**flags)
        self.TensorIOMode = _Enum(INPUT="INPUT", OUTPUT="OUTPUT")
        self.DataType = _Enum(FLOAT="FLOAT", HALF="HALF")
        self.Logger = type("Logger", (), {"WARNING": "WARNING", "VERBOSE": "VERBOSE",
                                          "__init__": lambda s, min_severity: setattr(s, "min_severity", min_severity)})
        major = int(version.split(".")[0])
        # TensorRT 11 removed the precision flags (strongly typed networks only)
        self.BuilderFlag = (_Enum(VERSION_COMPATIBLE="VERSION_COMPATIBLE") if major >= 11 else
                            _Enum(FP16="FP16", INT8="INT8", VERSION_COMPATIBLE="VERSION_COMPATIBLE"))
        self.ExecutionContextAllocationStrategy = _Enum(STATIC="STATIC", ON_PROFILE_CHANGE="ON_PROFILE_CHANGE",
                                                        USER_MANAGED="USER_MANAGED")
        self.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
        self.foreign_cache = foreign_cache
        self.networks: list[dict] = []
        self.configs: list[FakeConfig] = []
        self.loggers: list = []
        trt = self

        class Runtime:
            def __init__(self, logger) -> None:
                self.logger = logger
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, blob: bytes):
                try:
                    return FakeEngine(trt, json.loads(bytes(blob)))
                except ValueError:
                    return None

        class Builder:
            def __init__(self, logger) -> None:
                trt.loggers.append(logger)

            def create_network(self, flags: int):
                net = {"flags": flags, "parsed": None, "profiles": []}
                trt.networks.append(net)
                return FakeNetwork(net)

            def create_builder_config(self):
                c = FakeConfig(trt)
                trt.configs.append(c)
                return c

            def create_optimization_profile(self):
                return FakeProfile()

            def build_serialized_network(self, network, config):
                return engine_blob("encoder", [])

        class OnnxParser:
            """Like TensorRT < 10's parser: refuses an implicit-batch network (flags without EXPLICIT_BATCH
            or STRONGLY_TYPED); from 10 on every network is explicit-batch."""

            def __init__(self, network, logger) -> None:
                self.network = network
                self.errors: list[str] = []

            def parse_from_file(self, path: str) -> bool:
                flags = self.network.doc["flags"]
                kinds = trt.NetworkDefinitionCreationFlag
                explicit = any(flags & (1 << getattr(kinds, k)) for k in ("EXPLICIT_BATCH", "STRONGLY_TYPED")
                               if hasattr(kinds, k))
                if not explicit and int(trt.__version__.split(".")[0]) < 10:
                    self.errors.append("ONNX parser only supports networks with an explicit batch dimension")
                    return False
                self.network.doc["parsed"] = path
                self.network.read_inputs(path)
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> str:
                return self.errors[i]

        self.Runtime, self.Builder, self.OnnxParser = Runtime, Builder, OnnxParser
        self.IExecutionContext = FakeContext  # the class, as TensorRT exports it (feature probes read it)

    @staticmethod
    def nptype(dtype) -> type:
        """Like TensorRT's: a TypeError for the types numpy lacks (BF16, FP8 ...)."""
        mapping = {"FLOAT": np.float32, "HALF": np.float16}
        if dtype in mapping:
            return mapping[dtype]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    @staticmethod
    def scratch_bytes(shape) -> int:
        return 12 * int(np.prod(shape))


class FakeTensor:
    """A network input: its name and shape (-1 for a dynamic dimension), as ITensor has them."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class FakeNetwork:
    """INetworkDefinition as far as the builder asks: the parsed graph's inputs."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc
        self.inputs: list[FakeTensor] = []

    def read_inputs(self, path: str) -> None:
        import os

        import onnx

        if not os.path.isfile(path):
            return

        graph = onnx.load(path, load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        for v in graph.input:
            if v.name not in inits:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                self.inputs.append(FakeTensor(v.name, dims))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]


class FakeProfile:
    """IOptimizationProfile: records (name, min, opt, max) per input."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's own parameter names
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class FakeTimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = bytes(blob)

    def serialize(self) -> bytes:
        return self.blob or b"fresh-cache"


class FakeConfig:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.flags: list = []
        self.cache_calls: list[bytes] = []
        self.cache: FakeTimingCache | None = None
        self.profiles: list[FakeProfile] = []

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pool = size

    def set_flag(self, flag) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, blob: bytes) -> FakeTimingCache | None:
        """None when the stand-in is made with ``timing_cache=False`` (TensorRT may return None too)."""
        return FakeTimingCache(blob) if self.trt.timing_cache else None

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        """False for a cache made elsewhere (``foreign_cache``) unless mismatches are ignored."""
        self.cache_calls.append(cache.blob)
        if self.trt.foreign_cache is not None and cache.blob == self.trt.foreign_cache and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

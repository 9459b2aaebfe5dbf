"""Device memory, pinned host memory and one stream, behind one small interface.

The native TensorRT runner needs only a handful of CUDA calls. They come from cuda-python
(``cuda.bindings.runtime``, wheels on PyPI) or pycuda (JetPack's usual choice), whichever is
installed; both are imported lazily, so nothing here is needed on a CPU box. A machine without a
usable driver fails here with CUDA's own reason (``cudaErrorInsufficientDriver`` ...) in the message.

Threads: a server calls the runner from its batcher thread and from worker threads, not only from
the thread that built it. CUDA's current context is per CPU thread, so every call that touches the
device runs inside :meth:`CudaApi.activate`: pycuda pushes the device's primary context and pops it
afterwards (the driver API has no current context on a new thread: "invalid device context");
cuda-python's runtime API binds the primary context of the current device by itself, so it only
makes sure each thread has selected the device the runner was built on.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np

from ..errors import BackendError

INSTALL_HINT = ("on a machine with an NVIDIA GPU and driver: pip install 'dcssa-rt[cu12]' (CUDA 12 drivers, "
                "JetPack 6) or 'dcssa-rt[cu13]' (CUDA 13 drivers); pycuda on JetPack also works")
DRIVER_HINT = ("cuda-python's major version must match the driver's CUDA major (nvidia-smi shows it): "
               "pip install 'dcssa-rt[cu12]' for CUDA 12 drivers and JetPack 6, 'dcssa-rt[cu13]' for CUDA 13")


class CudaApi(ABC):
    """The CUDA calls the TensorRT runner makes; pointers are plain ints, streams are handles."""

    name: str

    @abstractmethod
    def device(self) -> dict:
        """{"name", "compute_capability" ("8.7"), "index"} of the current device."""

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def pinned(self, nbytes: int) -> np.ndarray:
        """Page-locked host memory as a uint8 array, until :meth:`free_pinned` (or this object goes)."""

    @abstractmethod
    def free_pinned(self, buf: np.ndarray) -> None:
        """Give back a buffer :meth:`pinned` returned (the array must not be used afterwards)."""

    @abstractmethod
    def stream(self) -> int:
        """A non-blocking stream: it never waits for work other libraries queue on the legacy default stream."""

    @abstractmethod
    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None: ...

    @abstractmethod
    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None: ...

    @abstractmethod
    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...

    @abstractmethod
    def synchronize(self, stream: int) -> None: ...

    @abstractmethod
    def destroy_stream(self, stream: int) -> None: ...

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this device's context current on the calling thread for the block."""
        yield

    # CUDA graphs (optional: the runner falls back to plain launches where they raise NotImplementedError)
    def begin_capture(self, stream: int) -> None:
        raise NotImplementedError(f"{self.name} has no CUDA graph capture here")

    def end_capture(self, stream: int) -> int:
        """The instantiated graph of the work captured on ``stream`` since :meth:`begin_capture`."""
        raise NotImplementedError(f"{self.name} has no CUDA graph capture here")

    def launch(self, graph: int, stream: int) -> None:
        raise NotImplementedError(f"{self.name} has no CUDA graph capture here")

    def destroy_graph(self, graph: int) -> None:
        raise NotImplementedError(f"{self.name} has no CUDA graph capture here")


def stream_handle(stream) -> int:
    """A cuda-python stream object as the integer handle TensorRT takes.

    cuda-bindings 12.9.1 / 13 deprecate ``int(obj)`` in favour of
    ``cuda.bindings.utils.get_cuda_native_handle``; older releases have only ``int``.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


class CudaPython(CudaApi):
    """cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # older cuda-python layout
        self.rt = cudart
        count = self._ok(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if count < 1:
            raise BackendError("CUDA reports no GPU", hint=INSTALL_HINT)
        self.index = int(self._ok(cudart.cudaGetDevice(), "cudaGetDevice"))
        self._pinned: set[int] = set()
        self._graphs: dict[int, object] = {}
        self._thread = threading.local()
        self._thread.device = self.index

    def _ok(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            name = getattr(err, "name", str(err))
            hint = DRIVER_HINT if "InsufficientDriver" in str(name) else INSTALL_HINT
            raise BackendError(f"CUDA {what} failed: {name} ({text.decode() if isinstance(text, bytes) else text})",
                               hint=hint)
        return values[0] if len(values) == 1 else (values or None)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The runtime API binds the current device's primary context by itself; a thread that has
        not selected a device uses device 0, so select the runner's device once per thread."""
        if getattr(self._thread, "device", None) != self.index:
            self._ok(self.rt.cudaSetDevice(self.index), "cudaSetDevice")
            self._thread.device = self.index
        yield

    def device(self) -> dict:
        index = self._ok(self.rt.cudaGetDevice(), "cudaGetDevice")
        prop = self._ok(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"index": int(index), "name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def pinned(self, nbytes: int) -> np.ndarray:
        ptr = int(self._ok(self.rt.cudaMallocHost(max(1, nbytes)), "cudaMallocHost"))
        self._pinned.add(ptr)
        return np.ctypeslib.as_array((ctypes.c_uint8 * max(1, nbytes)).from_address(ptr))

    def free_pinned(self, buf: np.ndarray) -> None:
        ptr = int(buf.ctypes.data)
        if ptr in self._pinned:
            self._pinned.discard(ptr)
            self._ok(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def stream(self) -> int:
        flags = self.rt.cudaStreamNonBlocking
        return stream_handle(self._ok(self.rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags"))

    def destroy_stream(self, stream: int) -> None:
        self._ok(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def _copy(self, dst: int, src: int, nbytes: int, kind, stream: int) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._copy(dst, src.ctypes.data, src.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._copy(dst.ctypes.data, src, dst.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._copy(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)

    def synchronize(self, stream: int) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def begin_capture(self, stream: int) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._ok(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: int) -> int:
        graph = self._ok(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            exe = self._ok(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self.rt.cudaGraphDestroy(graph)
        self._graphs[id(exe)] = exe  # the handle stays ours: the object is kept until destroy_graph
        return id(exe)

    def launch(self, graph: int, stream: int) -> None:
        self._ok(self.rt.cudaGraphLaunch(self._graphs[graph], stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: int) -> None:
        exe = self._graphs.pop(graph, None)
        if exe is not None:
            self._ok(self.rt.cudaGraphExecDestroy(exe), "cudaGraphExecDestroy")

    def __del__(self) -> None:  # pragma: no cover - needs a GPU
        for ptr in getattr(self, "_pinned", []):
            self.rt.cudaFreeHost(ptr)


class PyCuda(CudaApi):
    """pycuda's driver API on the device's primary context, pushed around every call.

    A context stack is per CPU thread: the context is pushed on the calling thread and popped again
    (never left current), so the batcher thread and worker threads can use the same allocations.
    """

    name = "pycuda"

    #: CU_STREAM_NON_BLOCKING
    NON_BLOCKING = 1

    def __init__(self) -> None:
        import pycuda.driver as drv

        self.drv = drv
        try:
            drv.init()
            self.dev = drv.Device(0)
            self.ctx = self.dev.retain_primary_context()
        except drv.Error as exc:
            raise BackendError(f"CUDA (pycuda) failed: {exc}", hint=INSTALL_HINT) from None
        self._keep: dict[int, object] = {}
        self._streams: dict[int, object] = {}
        self._depth = threading.local()

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Push the context once per thread and block: the calls inside a runner's call (which is
        itself inside ``activate``) find it current and do not push and pop again."""
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            self.ctx.push()
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                self.drv.Context.pop()

    def device(self) -> dict:
        major, minor = self.dev.compute_capability()
        return {"index": 0, "name": self.dev.name(), "compute_capability": f"{major}.{minor}"}

    def malloc(self, nbytes: int) -> int:
        with self.activate():
            alloc = self.drv.mem_alloc(max(1, nbytes))
        self._keep[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._keep.pop(ptr, None)
        if alloc is not None:
            with self.activate():
                alloc.free()

    def pinned(self, nbytes: int) -> np.ndarray:
        with self.activate():
            return self.drv.pagelocked_empty(max(1, nbytes), np.uint8)

    def free_pinned(self, buf: np.ndarray) -> None:
        alloc = getattr(buf, "base", None)
        if alloc is not None and hasattr(alloc, "free"):
            with self.activate():
                alloc.free()

    def stream(self) -> int:
        with self.activate():
            s = self.drv.Stream(flags=self.NON_BLOCKING)
        self._streams[s.handle] = s
        return s.handle

    def destroy_stream(self, stream: int) -> None:
        s = self._streams.pop(stream, None)
        if s is not None:
            with self.activate():
                del s  # pycuda destroys the stream when its object goes

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        with self.activate():
            self.drv.memcpy_htod_async(dst, src, self._streams[stream])

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        with self.activate():
            self.drv.memcpy_dtoh_async(dst, src, self._streams[stream])

    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        with self.activate():
            self.drv.memcpy_dtod_async(dst, src, nbytes, self._streams[stream])

    def synchronize(self, stream: int) -> None:
        with self.activate():
            self._streams[stream].synchronize()


def cuda_api() -> CudaApi:
    """cuda-python if importable, else pycuda; BackendError naming every reason otherwise."""
    reasons = []
    for cls, module in ((CudaPython, "cuda-python"), (PyCuda, "pycuda")):
        try:
            return cls()
        except ImportError as exc:
            reasons.append(f"{module} not installed ({exc.name or exc})")
        except BackendError as exc:
            reasons.append(f"{module}: {exc.message}")
    raise BackendError(f"no usable CUDA: {'; '.join(reasons)}", hint=INSTALL_HINT)

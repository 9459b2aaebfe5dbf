"""Device memory, pinned host memory and one stream, behind one small interface.

The native TensorRT runner needs only a handful of CUDA calls. They come from cuda-python
(``cuda.bindings.runtime``, wheels on PyPI) or pycuda (JetPack's usual choice), whichever is
installed; both are imported lazily, so nothing here is needed on a CPU box. A machine without a
usable driver fails here with CUDA's own reason (``cudaErrorInsufficientDriver`` ...) in the message.
"""

from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod

import numpy as np

from ..errors import BackendError

INSTALL_HINT = "on a machine with an NVIDIA GPU and driver: pip install cuda-python (or pycuda on JetPack)"


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
        """Page-locked host memory as a uint8 array (kept alive by the returned array's owner)."""

    @abstractmethod
    def stream(self) -> int: ...

    @abstractmethod
    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None: ...

    @abstractmethod
    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None: ...

    @abstractmethod
    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None: ...

    @abstractmethod
    def synchronize(self, stream: int) -> None: ...


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
        self._pinned: list[int] = []

    def _ok(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            name = getattr(err, "name", str(err))
            raise BackendError(f"CUDA {what} failed: {name} ({text.decode() if isinstance(text, bytes) else text})",
                               hint=INSTALL_HINT)
        return values[0] if len(values) == 1 else (values or None)

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
        self._pinned.append(ptr)
        return np.ctypeslib.as_array((ctypes.c_uint8 * max(1, nbytes)).from_address(ptr))

    def stream(self) -> int:
        return int(self._ok(self.rt.cudaStreamCreate(), "cudaStreamCreate"))

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

    def __del__(self) -> None:  # pragma: no cover - needs a GPU
        for ptr in getattr(self, "_pinned", []):
            self.rt.cudaFreeHost(ptr)


class PyCuda(CudaApi):  # pragma: no cover - needs a GPU and pycuda
    """pycuda's driver API on the device's primary context."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as drv

        self.drv = drv
        try:
            drv.init()
            self.dev = drv.Device(0)
            self.ctx = self.dev.retain_primary_context()
            self.ctx.push()
        except drv.Error as exc:
            raise BackendError(f"CUDA (pycuda) failed: {exc}", hint=INSTALL_HINT) from None
        self._keep: dict[int, object] = {}
        self._streams: dict[int, object] = {}

    def device(self) -> dict:
        major, minor = self.dev.compute_capability()
        return {"index": 0, "name": self.dev.name(), "compute_capability": f"{major}.{minor}"}

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(1, nbytes))
        self._keep[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._keep.pop(ptr, None)

    def pinned(self, nbytes: int) -> np.ndarray:
        return self.drv.pagelocked_empty(max(1, nbytes), np.uint8)

    def stream(self) -> int:
        s = self.drv.Stream()
        self._streams[s.handle] = s
        return s.handle

    def h2d(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.drv.memcpy_htod_async(dst, src, self._streams[stream])

    def d2h(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.drv.memcpy_dtoh_async(dst, src, self._streams[stream])

    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.drv.memcpy_dtod_async(dst, src, nbytes, self._streams[stream])

    def synchronize(self, stream: int) -> None:
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

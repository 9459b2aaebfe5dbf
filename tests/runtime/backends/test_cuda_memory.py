"""The CUDA layer's wiring on recording stand-ins of pycuda and cuda-python (no GPU here).

pycuda's context stack is per CPU thread, like CUDA's: the stand-in refuses device work on a thread
with no current context ("invalid device context"), so a server's batcher or worker thread using
buffers made on another thread fails unless every call pushes the context. cuda-python: the device
is selected on each new thread, streams come back as native handles (``get_cuda_native_handle``
where cuda-bindings has it) and are destroyed, and a too-old driver gets the cu12/cu13 hint.
"""

from __future__ import annotations

import sys
import threading
import types
from enum import Enum

import numpy as np
import pytest

from dcssa.runtime.backends import cuda_memory as cm
from dcssa.runtime.errors import BackendError

# -- pycuda ----------------------------------------------------------------------------------------


def _fake_pycuda() -> types.ModuleType:
    drv = types.ModuleType("pycuda.driver")
    local = threading.local()
    drv.log = []

    class Error(Exception):
        pass

    def stack() -> list:
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    def need(what: str) -> None:
        if not stack():
            raise Error(f"{what} failed: invalid device context")

    class Context:
        def push(self) -> None:
            drv.log.append(("push", threading.get_ident()))
            stack().append(self)

        @staticmethod
        def pop() -> None:
            stack().pop()

    primary = Context()

    class Device:
        def __init__(self, i: int) -> None:
            self.i = i

        def retain_primary_context(self):
            return primary

        def compute_capability(self):
            return (8, 7)

        def name(self):
            return "Orin"

    class Allocation:
        count = 0

        def __init__(self, n: int) -> None:
            need("cuMemAlloc")
            Allocation.count += 1
            self.ptr = 4096 * Allocation.count

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            need("cuMemFree")
            drv.log.append(("free", self.ptr))

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            need("cuStreamCreate")
            self.handle, self.flags = 77, flags
            drv.log.append(("stream", flags))

        def synchronize(self) -> None:
            need("cuStreamSynchronize")

    def copy(name):
        def f(*args):
            need(name)
            drv.log.append((name, threading.get_ident()))
        return f

    drv.Error, drv.Context, drv.Device, drv.Stream = Error, Context, Device, Stream
    drv.init = lambda: None
    drv.mem_alloc = Allocation
    class HostAllocation:
        def free(self) -> None:
            need("cuMemFreeHost")
            drv.log.append(("free_host", id(self)))

    class Pinned(np.ndarray):
        """pycuda's page-locked arrays have their HostAllocation as .base."""

        @property
        def base(self):
            return self.alloc

    def pagelocked_empty(n, dt):
        need("cuMemHostAlloc")
        arr = np.zeros(n, dt).view(Pinned)
        arr.alloc = HostAllocation()
        return arr

    drv.pagelocked_empty = pagelocked_empty
    drv.memcpy_htod_async = copy("htod")
    drv.memcpy_dtoh_async = copy("dtoh")
    drv.memcpy_dtod_async = copy("dtod")
    drv.current_depth = lambda: len(stack())
    return drv


@pytest.fixture
def pycuda(monkeypatch):
    drv = _fake_pycuda()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return drv


def test_pycuda_buffers_made_on_one_thread_work_on_others(pycuda):
    api = cm.PyCuda()
    assert pycuda.current_depth() == 0  # built without leaving its context current here
    stream = api.stream()
    dev = api.malloc(64)
    host = api.pinned(64)
    errors: list[BaseException] = []
    depth_after: list[int] = []

    def worker() -> None:
        try:
            api.h2d(dev, host, stream)
            api.d2d(dev, dev, 64, stream)
            api.d2h(host, dev, stream)
            api.synchronize(stream)
            with api.activate():  # what the runner wraps around execute_async_v3
                depth_after.append(pycuda.current_depth())
            depth_after.append(pycuda.current_depth())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert depth_after == [1, 0] * 3  # current inside, popped afterwards: never left behind
    copies = [e for e in pycuda.log if e[0] in ("htod", "dtoh", "dtod")]
    assert len(copies) == 9 and threading.get_ident() not in {tid for _, tid in copies}
    api.free(dev)
    api.destroy_stream(stream)
    assert ("free", dev) in pycuda.log and stream not in api._streams
    assert pycuda.current_depth() == 0


# -- cuda-python -----------------------------------------------------------------------------------


class _Err(Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35


def _fake_cuda_python(monkeypatch, *, native_helper: bool, driver_ok: bool = True):
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = _Err
    rt.calls = []
    ok = _Err.cudaSuccess

    class Stream:
        def __init__(self, value: int) -> None:
            self.value = value

        def __int__(self) -> int:
            raise AssertionError("int(cudaStream_t) is deprecated where get_cuda_native_handle exists")

    def call(name, *result):
        def f(*args):
            rt.calls.append((name, threading.get_ident(), args))
            return result if len(result) > 1 else result[0]
        return f

    rt.cudaGetDeviceCount = call("count", ok, 1) if driver_ok else call("count", _Err.cudaErrorInsufficientDriver, 0)
    rt.cudaGetDevice = call("getdevice", ok, 0)
    rt.cudaSetDevice = call("setdevice", ok)
    rt.cudaStreamNonBlocking = 1
    rt.cudaStreamCreateWithFlags = call("create", ok, Stream(0xBEEF))
    rt.cudaMallocHost = call("mallochost", ok, 0)
    rt.cudaFreeHost = call("freehost", ok)
    rt.cudaStreamDestroy = call("destroy", ok)
    rt.cudaGetErrorString = lambda err: (ok, b"CUDA driver version is insufficient for CUDA runtime version")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    mods = {"cuda": types.ModuleType("cuda"), "cuda.bindings": bindings, "cuda.bindings.runtime": rt}
    if native_helper:
        utils = types.ModuleType("cuda.bindings.utils")
        utils.get_cuda_native_handle = lambda obj: obj.value
        bindings.utils = utils
        mods["cuda.bindings.utils"] = utils
    else:
        Stream.__int__ = lambda self: self.value
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # import fails, as before 12.9.1
    mods["cuda"].bindings = bindings
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return rt


@pytest.mark.parametrize("native_helper", [True, False])
def test_cuda_python_streams_are_native_handles_and_destroyed(monkeypatch, native_helper):
    rt = _fake_cuda_python(monkeypatch, native_helper=native_helper)
    api = cm.CudaPython()
    stream = api.stream()
    assert stream == 0xBEEF and isinstance(stream, int)
    assert [c[2] for c in rt.calls if c[0] == "create"] == [(rt.cudaStreamNonBlocking,)]  # non-blocking
    api.destroy_stream(stream)
    assert ("destroy", threading.get_ident(), (0xBEEF,)) in rt.calls


def test_cuda_python_selects_the_device_once_per_new_thread(monkeypatch):
    rt = _fake_cuda_python(monkeypatch, native_helper=True)
    api = cm.CudaPython()
    with api.activate():
        pass
    assert not [c for c in rt.calls if c[0] == "setdevice"]  # the building thread has it already

    def worker() -> None:
        for _ in range(3):
            with api.activate():
                pass

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    sets = [c for c in rt.calls if c[0] == "setdevice"]
    assert len(sets) == 1 and sets[0][2] == (0,) and sets[0][1] != threading.get_ident()


def test_an_old_driver_is_told_which_extra_to_install(monkeypatch):
    _fake_cuda_python(monkeypatch, native_helper=True, driver_ok=False)
    with pytest.raises(BackendError) as err:
        cm.CudaPython()
    assert "cudaErrorInsufficientDriver" in err.value.message
    assert "dcssa-rt[cu12]" in err.value.hint and "dcssa-rt[cu13]" in err.value.hint


def test_pycuda_pushes_the_context_once_per_runner_call_and_streams_do_not_block(pycuda):
    api = cm.PyCuda()
    stream = api.stream()
    assert ("stream", cm.PyCuda.NON_BLOCKING) in pycuda.log
    dev, host = api.malloc(64), api.pinned(64)
    pycuda.log.clear()
    with api.activate():  # one runner call: stage, execute, copy back, wait
        api.h2d(dev, host, stream)
        api.d2d(dev, dev, 64, stream)
        api.d2h(host, dev, stream)
        api.synchronize(stream)
    assert [e for e in pycuda.log if e[0] == "push"] == [("push", threading.get_ident())]
    assert pycuda.current_depth() == 0


def test_pinned_buffers_are_given_back_by_free_pinned(pycuda):
    api = cm.PyCuda()
    buf = api.pinned(32)
    api.free_pinned(buf)
    assert ("free_host", id(buf.base)) in pycuda.log


def test_real_cuda_bindings_without_a_driver_is_a_backend_error_not_a_traceback():
    """The installed cuda-bindings (13.x here), on a machine without an NVIDIA driver."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    from dcssa.benchmarks.gpu.probe import cuda_driver

    if cuda_driver().error is None:
        pytest.skip("this machine has a working NVIDIA driver")
    with pytest.raises(BackendError) as err:
        cm.CudaPython()
    assert err.value.message.startswith("CUDA cudaGetDeviceCount failed: cudaError")
    with pytest.raises(BackendError) as err:
        cm.cuda_api()
    assert "cuda-python: CUDA cudaGetDeviceCount failed" in err.value.message and "dcssa-rt[cu12]" in err.value.hint

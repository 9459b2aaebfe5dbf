"""What this machine has for the GPU path, read without importing torch, TensorRT or onnxruntime.

The driver is asked through ``libcuda`` with ctypes (``cuInit``, ``cuDriverGetVersion``,
``cuDeviceGetCount``): that works the same on a desktop, in an NGC container (the driver is mounted
in) and on a Jetson (``/usr/lib/aarch64-linux-gnu/tegra``), and costs milliseconds, so a machine
without a GPU is told so at once. Packages are looked up by their distribution metadata and module
specs only; whether they really work is each stage's business.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import importlib.util
import platform
from dataclasses import asdict, dataclass, field

#: distribution names, per component, first found wins
DISTS = {
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "cuda-python": ("cuda-bindings", "cuda-python"),
    "pycuda": ("pycuda",),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime",),
    "onnxruntime-gpu": ("onnxruntime-gpu",),
    "polygraphy": ("polygraphy",),
}
#: module names (JetPack's apt packages install modules without pip metadata)
MODULES = {"tensorrt": "tensorrt", "cuda-python": "cuda.bindings", "pycuda": "pycuda", "torch": "torch",
           "onnx": "onnx", "polygraphy": "polygraphy"}

ORT_SWAP = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
            "(Jetson: the wheel of your JetPack from https://pypi.jetson-ai-lab.io)")


@dataclass
class Driver:
    """The CUDA driver as libcuda reports it (``error`` set when there is none or it fails)."""

    version: str | None = None  # "12.6"
    devices: int = 0
    error: str | None = None


def cuda_driver(lib: str = "libcuda.so.1") -> Driver:
    """Ask libcuda for the driver version and the device count; never raises."""
    try:
        cuda = ctypes.CDLL(lib)
    except OSError as exc:
        return Driver(error=f"no NVIDIA driver: {lib} cannot be loaded ({exc})")
    try:
        rc = cuda.cuInit(0)
        if rc != 0:
            return Driver(error=f"the NVIDIA driver is present but cuInit failed (CUresult {rc}): no usable GPU")
        v, n = ctypes.c_int(0), ctypes.c_int(0)
        cuda.cuDriverGetVersion(ctypes.byref(v))
        cuda.cuDeviceGetCount(ctypes.byref(n))
    except AttributeError as exc:
        return Driver(error=f"{lib} is not an NVIDIA CUDA driver library ({exc})")
    version = f"{v.value // 1000}.{v.value % 1000 // 10}"
    if n.value < 1:
        return Driver(version=version, error=f"CUDA driver {version} sees no GPU")
    return Driver(version=version, devices=n.value)


def installed(component: str) -> str | None:
    """The version of the first installed distribution of ``component`` ("found" when only its
    module is there, as with JetPack's apt-installed TensorRT), or None."""
    for dist in DISTS[component]:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    module = MODULES.get(component)
    try:
        if module and importlib.util.find_spec(module) is not None:
            return "found"
    except (ImportError, ValueError):
        pass
    return None


@dataclass
class Probe:
    """The machine, as gpu-check plans from it."""

    driver: Driver
    packages: dict[str, str | None]
    machine: str = field(default_factory=platform.machine)
    bundle_ready: bool = False

    @property
    def gpu(self) -> bool:
        return self.driver.error is None and self.driver.devices > 0

    def capabilities(self) -> set[str]:
        """What the stages may need: gpu, tensorrt, torch-cuda, ort-trt, export, int8-graphs ..."""
        p = self.packages
        caps = set()
        if self.gpu:
            caps.add("gpu")
            if p.get("tensorrt") and (p.get("cuda-python") or p.get("pycuda")):
                caps.add("tensorrt")
            if p.get("torch") and not str(p["torch"]).endswith("+cpu"):  # a CPU-only wheel sees no GPU
                caps.add("torch-cuda")
            if p.get("onnxruntime-gpu"):
                caps.add("ort-trt")
        if p.get("onnxruntime") or p.get("onnxruntime-gpu"):
            caps.add("ort-cpu")
        if self.bundle_ready or (p.get("torch") and p.get("onnx")):
            caps.add("bundle")
        if p.get("torch") and p.get("onnx"):
            caps.add("export")
        if p.get("polygraphy"):
            caps.add("polygraphy")
        return caps

    def missing(self) -> dict[str, str]:
        """Each missing component, with what it costs and how to add it."""
        p, out = self.packages, {}
        if not self.gpu:
            out["gpu"] = self.driver.error or "no GPU"
        if not p.get("tensorrt"):
            out["tensorrt"] = ("TensorRT: pip install tensorrt-cu12 (CUDA 12 driver) or tensorrt-cu13 (CUDA 13); "
                               "JetPack and NGC containers ship it (apt python3-libnvinfer)")
        if not (p.get("cuda-python") or p.get("pycuda")):
            out["cuda-bindings"] = ("CUDA bindings for the native TensorRT runner: pip install 'dcssa-rt[cu12]' "
                                    "(CUDA 12 / JetPack 6) or 'dcssa-rt[cu13]' (CUDA 13 / JetPack 7)")
        if not p.get("torch"):
            out["torch"] = ("PyTorch (peers, and making the demo bundle): the CUDA wheel of your platform "
                            "(JetPack: the jetson-ai-lab wheel)")
        if not p.get("onnxruntime-gpu"):
            out["onnxruntime-gpu"] = f"onnxruntime-gpu for --backend ort-trt / ort-cuda: {ORT_SWAP}"
        return out

    def onnxruntime_note(self) -> str:
        """Which onnxruntime is installed, and how to swap it."""
        cpu, gpu = self.packages.get("onnxruntime"), self.packages.get("onnxruntime-gpu")
        if cpu and gpu:
            return (f"both onnxruntime {cpu} and onnxruntime-gpu {gpu} are installed: they share the module "
                    f"`onnxruntime` and the last one installed wins; keep one: {ORT_SWAP}")
        if gpu:
            return f"onnxruntime-gpu {gpu} (CPU, CUDA and TensorRT providers, if its CUDA libraries load)"
        if cpu:
            return f"onnxruntime {cpu} (CPU only: ort-trt / ort-cuda stages are skipped); to swap: {ORT_SWAP}"
        return "no onnxruntime: pip install onnxruntime (the CPU reference of every parity check)"

    def to_json(self) -> dict:
        return {"driver": asdict(self.driver), "packages": self.packages, "machine": self.machine,
                "capabilities": sorted(self.capabilities()), "missing": self.missing(),
                "onnxruntime": self.onnxruntime_note()}


def probe(bundle_ready: bool = False) -> Probe:
    """Read this machine (milliseconds; imports nothing heavy)."""
    return Probe(cuda_driver(), {c: installed(c) for c in DISTS}, bundle_ready=bundle_ready)

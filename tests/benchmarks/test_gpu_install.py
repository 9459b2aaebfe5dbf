"""``benchmarks/gpu/install.py``: on a GPU box it keeps what the machine has and adds only what is missing.

The plan is checked against hand-written machines (an NGC TensorRT container, a JetPack Orin, a
torch-only CUDA box), and the script itself runs here with --dry-run from a plain interpreter (it
must work before the project is installed: standard library only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dcssa.benchmarks.gpu import install

ROOT = Path(__file__).resolve().parents[2]
REQS = install.requirements(ROOT / "pyproject.toml")
BASE = {"numpy": "1.26.4", "pillow": "10.4.0", "click": "8.1.7", "tqdm": "4.66.5", "onnx": "1.17.0"}


def test_requirements_come_from_pyproject():
    names = {install._name(r) for r in REQS}
    assert {"numpy", "onnxruntime", "click", "torch", "torchvision", "onnx"} <= names


def test_ngc_tensorrt_container_keeps_onnxruntime_gpu_and_adds_bindings_of_the_drivers_cuda():
    have = {**BASE, "onnxruntime-gpu": "1.22.0", "tensorrt": "10.13.0"}
    todo, notes = install.plan(REQS, have, tensorrt=True, driver_major=13)
    assert "cuda-bindings==13.*" in todo and "polygraphy" in todo
    assert not any(install._name(r) == "onnxruntime" for r in todo)  # the CPU wheel would shadow the GPU one
    assert not any(install._name(r) in ("torch", "torchvision") for r in todo)
    assert any("torch is not installed" in n for n in notes)


def test_jetpack_keeps_its_own_torch_build_and_pycuda():
    have = {**BASE, "onnxruntime-gpu": "1.20.0", "tensorrt": "10.3.0", "pycuda": "2024.1",
            "torch": "2.5.0a0+872d972e41.nv24.08", "torchvision": "0.20.0", "polygraphy": "0.49.9"}
    todo, notes = install.plan(REQS, have, tensorrt=True, driver_major=12)
    assert todo == [] and notes == []


def test_a_torch_only_cuda_box_gets_the_cpu_onnxruntime_reference_and_nothing_for_tensorrt():
    have = {**BASE, "torch": "2.14.1", "torchvision": "0.29.1"}
    todo, _ = install.plan(REQS, have, tensorrt=False, driver_major=12)
    assert [install._name(r) for r in todo] == ["onnxruntime", "polygraphy"]


def test_an_old_numpy_is_upgraded_but_torch_of_any_version_is_kept():
    have = {**BASE, "numpy": "1.21.0", "onnxruntime": "1.32.0", "torch": "1.13.0", "torchvision": "0.14.0",
            "polygraphy": "0.49.9"}
    todo, _ = install.plan(REQS, have, tensorrt=False, driver_major=None)
    assert [install._name(r) for r in todo] == ["numpy"]


def test_the_script_runs_from_a_bare_interpreter_with_dry_run():
    proc = subprocess.run([sys.executable, "-I", str(ROOT / "benchmarks" / "gpu" / "install.py"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"--no-deps -e {ROOT}" in proc.stderr and "onnxruntime:" in proc.stderr


def test_make_gpu_check_uses_a_venv_that_sees_the_system_packages():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\ngpu-check:"):].split("\n\n")[0]
    assert "--system-site-packages" in target and "benchmarks/gpu/install.py" in target
    assert "$(STAMP)" not in target.splitlines()[1]  # not the CPU venv with its pinned torch and CPU onnxruntime

"""Packaging facts a wrong edit would silently break on GPU boxes."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

EXTRAS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _cuda_python(extra: str) -> Requirement:
    (req,) = [Requirement(r) for r in EXTRAS[extra] if Requirement(r).name == "cuda-python"]
    return req


def test_cuda_python_is_bounded_to_one_cuda_major_per_extra():
    """pip picks the newest cuda-python; 13.x needs a CUDA 13 driver, so a CUDA 12 box (JetPack 6)
    must never get it from the cu12 extra, nor 14.x from cu13."""
    for extra, major in (("cu12", 12), ("cu13", 13), ("tensorrt", 12)):
        spec = _cuda_python(extra).specifier
        assert Version(f"{major}.9.0") in spec, extra
        assert Version(f"{major + 1}.0.0") not in spec and Version(f"{major - 1}.8.0") not in spec, extra
    # cu12 needs the cuda.bindings layout (12.6+), which cuda_memory imports first
    assert Version("12.5.0") not in _cuda_python("cu12").specifier


def test_nncf_is_an_optional_extra_the_runtime_never_imports():
    """`dcssa-export calibrate --quantiser nncf` needs the `nncf` extra; nothing else may import it
    (``import nncf`` also pulls in torch and openvino when they are installed), and `make test`
    installs it so that its tests run."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    (req,) = [Requirement(r) for r in EXTRAS["nncf"]]
    assert req.name == "nncf" and Version("3.4.0") in req.specifier and Version("4.0.0") not in req.specifier
    assert not any("nncf" in r for extra, reqs in EXTRAS.items() if extra != "nncf" for r in reqs)
    assert not [p for p in (root / "runtime").rglob("*.py") if "nncf" in p.read_text()]
    makefile = (root / "Makefile").read_text()
    assert ",nncf]'" in makefile and "test: $(TEST_STAMP)" in makefile
    code = ("import sys, dcssa.runtime, dcssa.calibration.job, dcssa.calibration.commands, dcssa.export.cli; "
            "print('nncf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""``make gpu-check`` (``dcssa-bench gpu-check``) on a machine without a GPU: it must stop at once, say why, and fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dcssa.benchmarks import gpu_check
from dcssa.runtime.backends.tensorrt import TensorRTBackend

NO_GPU = not TensorRTBackend.available()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU and TensorRT: the no-GPU path cannot be observed")
def test_without_a_gpu_it_stops_at_once_with_the_reason(tmp_path):
    out = tmp_path / "report"
    code = (  # `dcssa-bench gpu-check`: the command line loads every harness module, none of them heavy
        "import sys\n"
        "from dcssa.benchmarks.cli import main\n"
        "try:\n"
        f"    main(['gpu-check', '--bundle', {str(tmp_path / 'none')!r}, '--out', {str(out)!r}])\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'dcssa.export', 'dcssa.calibration') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == gpu_check.NO_GPU_EXIT == 2
    assert "no GPU/TensorRT on this machine, nothing was run" in proc.stderr
    assert "tensorrt" in proc.stderr.lower() and "dcssa-rt[cu12]" in proc.stderr
    assert "heavy: []" in proc.stdout  # stopped before exporting, calibrating or importing torch
    assert not out.exists() and not (tmp_path / "none").exists()


def test_preflight_reports_the_backend_reason(monkeypatch):
    from dcssa.runtime.errors import BackendError

    def missing() -> None:
        raise BackendError("no usable CUDA: cuda-python: CUDA cudaGetDeviceCount failed", hint="install a driver")

    monkeypatch.setattr(TensorRTBackend, "unavailable_reason", staticmethod(missing))
    assert gpu_check.preflight() == "no usable CUDA: cuda-python: CUDA cudaGetDeviceCount failed (install a driver)"
    monkeypatch.setattr(TensorRTBackend, "unavailable_reason", staticmethod(lambda: None))
    assert gpu_check.preflight() is None

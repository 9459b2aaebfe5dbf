"""``dcssa-export calibrate`` / ``engines`` and the precision options of the export command: user
errors are one line, and ``dcssa-rt info`` shows what calibration recorded."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from dcssa.runtime.backends import tensorrt as trtb


def test_info_prints_the_fidelity_reports(calibrated):
    from dcssa.runtime.cli import main

    path, manifest = calibrated
    res = CliRunner().invoke(main, ["info", "--bundle", str(path)])
    assert res.exit_code == 0
    line = next(x for x in res.output.splitlines() if x.strip().startswith("fidelity int8 "))
    assert f"{manifest['fidelity']['int8']['top10_overlap']:.1%}" in line


def test_engines_cli_needs_tensorrt(calibrated):
    if trtb.TensorRTBackend.available():
        pytest.skip("TensorRT and a GPU are present: engines would really be built")
    path, _ = calibrated
    proc = subprocess.run([sys.executable, "-m", "dcssa.export.cli", "engines", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_export_precision_needs_calibration_data(tmp_path):
    from dcssa.export.cli import main

    res = CliRunner().invoke(main, ["--ckpt", str(tmp_path / "x.pth"), "--out", str(tmp_path / "b"), "--precision", "int8"])
    assert res.exit_code == 2 and "--calib" in res.output and not (tmp_path / "b").exists()


def test_calibrate_cli_bad_data_is_one_line(bundle2, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dcssa.export.cli", "calibrate", str(bundle2), "--data",
                           str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "missing") in proc.stderr and "fix:" in proc.stderr

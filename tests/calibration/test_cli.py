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


# -- the one-shot export with reduced precisions: the fidelity gallery options of `calibrate` ------------


def _strokes_json(folder) -> list[dict]:
    import json

    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_export_precision_refuses_data_without_photos_before_exporting(demo_ckpt, dataset, tmp_path):
    """A folder of strokes JSON has no photo/ beside it: said at once, naming --photos, no bundle written."""
    from dcssa.export.cli import main

    out = tmp_path / "b"
    res = CliRunner().invoke(main, ["--ckpt", str(demo_ckpt), "--out", str(out), "--precision", "fp32,int8",
                                    "--calib", str(dataset / "strokes"), "-q"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert str(dataset / "strokes") in res.output and "--photos FOLDER" in res.output
    assert not out.exists()  # refused before the export, not after it


def test_export_precision_with_photos_end_to_end(demo_ckpt, dataset, tmp_path):
    """`dcssa-export --ckpt X --precision fp32,int8 --calib STROKES/ --photos PHOTOS/` exports, calibrates and
    ranks the held-out prefixes against exactly PHOTOS/."""
    import json

    from dcssa.export.cli import main
    strokes, photos = dataset / "strokes", dataset / "photo"
    recipe = tmp_path / "recipe.json"  # minmax ranges on two blocks: the quickest real int8 graph
    recipe.write_text(json.dumps({"method": "minmax", "blocks": ["Mixed_5b", "Mixed_6a"]}))
    out = tmp_path / "b"
    res = CliRunner().invoke(main, ["--ckpt", str(demo_ckpt), "--out", str(out), "--precision", "fp32,int8",
                                    "--calib", str(strokes), "--photos", str(photos), "--recipe", str(recipe),
                                    "--json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["precisions"] == ["fp32", "int8"]
    rep, cal = manifest["fidelity"]["int8"], manifest["calibration"]
    # the gallery is the photo folder given, every image of it
    n_photos = len(list(photos.glob("*.png")))
    assert rep["gallery"] == {"photos": n_photos, "source": str(photos)}
    # every sketch of the folder is used once, every stroke prefix of it (96 calibration rasters is more than there are)
    docs = _strokes_json(strokes)
    assert cal["calibration_prefixes"] + cal["heldout_prefixes"] == sum(len(d["strokes"]) for d in docs)
    assert rep["held_out"]["sketches"] == cal["heldout_sketches"] < len(docs)
    # the sketches' "target" names photos of that folder: the task accuracy is measured on every held-out one
    assert rep["target_accuracy"]["fp32"]["sketches"] == cal["heldout_sketches"]
    assert 0.0 <= rep["top1_agreement"] <= 1.0 and rep["topk"] == min(10, n_photos)
    # the int8 graph is in the bundle, under the manifest's name and hash
    from dcssa.runtime.bundle import Bundle, sha256_file

    entry = manifest["graphs"]["sketch_encoder"]["int8"]
    assert sha256_file(out / entry["file"]) == manifest["files"][entry["file"]]["sha256"]
    assert Bundle.load(out).precisions("sketch_encoder") == ["fp32", "int8"]

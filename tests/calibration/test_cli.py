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
    assert rep["gallery"] == {"photos": n_photos, "source": str(photos), "rule": "every photo of the source"}
    # every sketch of the folder is used once, every stroke prefix of it (96 calibration rasters is more than there are)
    docs = _strokes_json(strokes)
    assert cal["calibration_prefixes"] + cal["heldout_prefixes"] == sum(len(d["strokes"]) for d in docs)
    assert rep["held_out"]["sketches"] == cal["heldout_sketches"] < len(docs)
    # the sketches' "target" names photos of that folder: the task accuracy is measured on every held-out one
    assert rep["target_accuracy"]["fp32"]["sketches"] == cal["heldout_sketches"]
    assert 0.0 <= rep["top1_agreement"] <= 1.0 and rep["topk"] == min(10, n_photos)
    # the int8 graph is in the bundle, under the manifest's name and hash
    from dcssa.runtime.contract.bundle import Bundle, sha256_file

    entry = manifest["graphs"]["sketch_encoder"]["int8"]
    assert sha256_file(out / entry["file"]) == manifest["files"][entry["file"]]["sha256"]
    assert Bundle.load(out).precisions("sketch_encoder") == ["fp32", "int8"]


# -- one computation: the calibrate report and `dcssa-rt eval --compare` on the same data ------------------


def test_calibrate_and_eval_compare_report_the_same_agreement(bundle2, dataset, tmp_path):
    """Same int8 graph, same held-out (test) sketches: the two commands give the same numbers (issue 19)."""
    import json
    import pickle
    import shutil

    from dcssa.export.cli import main
    from dcssa.runtime.cli import main as rt

    bundle = tmp_path / "bundle"
    shutil.copytree(bundle2, bundle)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"method": "minmax", "blocks": ["Mixed_5b", "Mixed_6a", "Mixed_7a"]}))
    cal = CliRunner().invoke(main, ["calibrate", str(bundle), "--data", str(dataset), "--precision", "int8",
                                    "--recipe", str(recipe), "--max-calib", "4", "--json"])
    assert cal.exit_code == 0, cal.output
    rep = json.loads(cal.stdout)["fidelity"]["int8"]
    ev = CliRunner().invoke(rt, ["eval", "--dataset", str(dataset), "--bundle", str(bundle), "--backend", "ort-cpu",
                                 "--compare", "fp32,int8", "--out", str(tmp_path / "eval"), "--json"])
    assert ev.exit_code == 0, ev.output
    doc = json.loads(ev.stdout)
    fp32, int8 = doc["runs"]
    # the same prefixes: every stroke of every test sketch of the coordinate file, counted here from the file
    with open(dataset / f"{dataset.name}_Coordinate", "rb") as f:
        coords = pickle.load(f)
    test = {k: v for k, v in coords.items() if k.startswith("/test/")}
    strokes = sum(int((v[:, 2] == 1).sum()) + int(v[-1, 2] != 1) for v in test.values())
    assert rep["held_out"] == {"sketches": len(test), "prefixes": strokes}
    assert sum(s["steps"] for s in int8["sketches"]) == strokes
    # the same gallery: the photos the test sketches depict, fewer than the photo folder holds
    depicted = {k.rsplit("/", 1)[1].rsplit("_", 1)[0] for k in test}
    assert rep["gallery"]["photos"] == doc["dataset"]["gallery_photos"] == len(depicted)
    assert len(depicted) < len(list((dataset / "photo").glob("*.png")))
    # the same numbers
    assert rep["top1_agreement"] == int8["agreement"]["top1_identical"]
    assert rep["top10_overlap"] == int8["agreement"]["top10_overlap"]
    assert rep["target_accuracy"]["fp32"]["acc@1"] == fp32["metrics"]["acc@1"]
    assert rep["target_accuracy"]["int8"]["acc@10"] == int8["metrics"]["acc@10"]
    # and the same task change with the same bounds (one function computes them for both)
    for m in ("m@B", "acc@10", "m@A"):
        assert rep["task"][m]["drop"] == pytest.approx(int8["task_change"]["metrics"][m]["drop"], abs=1e-12)
        assert rep["task"][m]["drop_upper"] == pytest.approx(int8["task_change"]["metrics"][m]["drop_upper"], abs=1e-12)
    assert rep["task"]["m@B"]["reference"] == pytest.approx(fp32["metrics"]["m@B"])
    assert "Task change against" in (tmp_path / "eval" / "eval.md").read_text()

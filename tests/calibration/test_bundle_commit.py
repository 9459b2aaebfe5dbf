"""Calibrating a bundle: what the manifest records, the caller's recipe, and the atomic commit."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from tiny_bundle import write_tiny_bundle

from dcssa.calibration import fidelity as fd
from dcssa.calibration.calibset import prefix_set, synthetic_sketches
from dcssa.calibration.int8 import Int8Recipe
from dcssa.calibration.job import StageOutput, Yardstick, commit, commit_stages, load_recipe, parse_precisions
from dcssa.runtime import Bundle
from dcssa.runtime.backends import get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import DcssaError


def test_manifest_records_graphs_reports_and_recipe(calibrated, int8_blocks):
    path, manifest = calibrated
    b = Bundle.load(path)
    assert b.manifest == manifest
    assert manifest["precisions"] == ["fp32", "fp16", "int8"]
    assert set(b.precisions(mf.SKETCH_ENCODER)) == {"fp32", "int8", "fp16"}
    assert set(b.precisions(mf.PHOTO_ENCODER)) == {"fp32", "fp16"}
    assert b.precisions(mf.HEAD_STEP) == ["fp32"]
    entry = b.graph_entry(mf.SKETCH_ENCODER, "int8")
    for fname in (entry["file"], entry["tensorrt_file"], b.graph_entry(mf.SKETCH_ENCODER, "fp16")["file"]):
        assert re.fullmatch(r"sketch_encoder\.(int8|int8sym|fp16)-[0-9a-f]{8}\.onnx", fname)
        b.verified_file(fname)  # sha256 recorded and matching
    assert manifest["calibration"]["int8"]["recipe"]["blocks"] == int8_blocks
    assert manifest["calibration"]["int8"]["tensorrt_recipe"]["symmetric_activations"] is True
    for key in ("int8", "int8-tensorrt", "fp16"):
        rep = manifest["fidelity"][key]
        for v in (rep["top1_agreement"], rep["top10_overlap"], rep["embedding_cosine"]["mean"]):
            assert 0.0 <= v <= 1.0 + 1e-6
        assert rep["embedding_cosine"]["min"] <= rep["embedding_cosine"]["mean"]
        # --max-heldout 4 is met with whole sketches (or one sketch when a single one has more strokes)
        assert rep["held_out"]["prefixes"] <= 4 or rep["held_out"]["sketches"] == 1
        assert rep["held_out"]["prefixes"] == manifest["calibration"]["heldout_prefixes"]
    lat = manifest["fidelity"]["int8"]["latency"]
    assert lat["ratio"] == pytest.approx(lat["reduced_ms"] / lat["fp32_ms"])
    assert "latency" not in manifest["fidelity"]["fp16"]


def test_the_callers_recipe_is_not_changed(calibrated, int8_recipe, int8_blocks):
    """Two graphs with two encodings come from it, yet the caller's recipe is what it was."""
    _path, manifest = calibrated
    assert int8_recipe == Int8Recipe(blocks=int8_blocks)
    assert manifest["calibration"]["int8"]["recipe"] == int8_recipe.record(symmetric=False)
    assert manifest["calibration"]["int8"]["tensorrt_recipe"] == int8_recipe.record(symmetric=True)


def test_failed_commit_leaves_the_old_bundle(calibrated, tmp_path, monkeypatch):
    path, _ = calibrated
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    before = (copy / mf.MANIFEST).read_text()
    staged = tmp_path / "new.onnx"
    staged.write_bytes(b"new graph")
    import dcssa.calibration.job as cb

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(cb, "_write_manifest", boom)
    with pytest.raises(OSError):
        commit(copy, {"sketch_encoder.int8-00000000.onnx": staged}, lambda m: m["graphs"].clear())
    assert (copy / mf.MANIFEST).read_text() == before
    b = Bundle.load(copy)
    for name, per in b.manifest["graphs"].items():
        for prec in per:
            b.graph_path(name, prec)  # every referenced file still there and intact


def test_recalibration_replaces_and_deletes_stale_files(calibrated, tmp_path):
    path, manifest = calibrated
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    old = manifest["graphs"][mf.SKETCH_ENCODER]["int8"]["file"]
    staged = tmp_path / "x.onnx"
    shutil.copy(copy / old, staged)
    with open(staged, "ab") as f:
        f.write(b"\0")  # different content, different hash

    def update(m):
        m["graphs"][mf.SKETCH_ENCODER]["int8"]["file"] = "sketch_encoder.int8-ffffffff.onnx"

    new = commit(copy, {"sketch_encoder.int8-ffffffff.onnx": staged}, update)
    assert not (copy / old).exists() and old not in new["files"]
    Bundle.load(copy).verified_file("sketch_encoder.int8-ffffffff.onnx")


# -- the commit stage on a tiny bundle ----------------------------------------------------------------


def _prepared(folder, work) -> Yardstick:
    bundle = Bundle.load(folder)
    sketches = synthetic_sketches(5, seed=2)
    calib, held = prefix_set(sketches[:3]), prefix_set(sketches[3:]).subsample(2)
    gallery = fd.GalleryMatrix(np.eye(3, dtype=np.float32), ["a", "b", "c"], "by hand")
    ref = fd.Reference(np.zeros((2, 16), np.float32), np.zeros((2, 8), np.float32), np.zeros((2, 3), int))
    return Yardstick(bundle, "synthetic:5", calib, held, gallery, ref, get_backend("ort-cpu"), work)


def _stage(folder, work, precision: str, content: bytes, **kw) -> StageOutput:
    tmp = work / f"{precision}.onnx"
    tmp.write_bytes((folder / f"{mf.SKETCH_ENCODER}.onnx").read_bytes() + content)
    name = f"{mf.SKETCH_ENCODER}.{precision}-{content.hex()[:8]:0<8}.onnx"
    return StageOutput({name: tmp}, {(mf.SKETCH_ENCODER, precision): {"file": name, "precision": precision}},
                       {precision: {"top1_agreement": 1.0}}, **kw)


def test_commit_stages_merges_every_stage_in_one_swap(tmp_path):
    folder = write_tiny_bundle(tmp_path / "b")
    work = tmp_path / "work"
    work.mkdir()
    prep = _prepared(folder, work)
    record = {"recipe": {"method": "minmax", "blocks": ["Mixed_5b"], "symmetric_activations": False}}
    manifest = commit_stages(prep, [_stage(folder, work, "int8", b"\1", int8=record),
                                    _stage(folder, work, "fp16", b"\2")])
    assert manifest["precisions"] == ["fp32", "fp16", "int8"]  # fp32 first, whatever the stage order
    b = Bundle.load(folder)
    assert b.manifest == manifest
    sig = mf.signature(mf.SKETCH_ENCODER, b.feature_dim, b.embed_dim)
    for prec in ("fp16", "int8"):
        entry = b.graph_entry(mf.SKETCH_ENCODER, prec)
        assert entry["inputs"] == sig["inputs"] and entry["outputs"] == sig["outputs"]
        b.verified_file(entry["file"])
    assert set(manifest["fidelity"]) == {"fp16", "int8"}
    info = manifest["calibration"]
    assert (info["data"], info["calibration_prefixes"], info["heldout_prefixes"], info["heldout_sketches"],
            info["gallery"]) == ("synthetic:5", len(prep.calib), 2, 2, "by hand")
    assert info["int8"] == record
    # an fp16-only recalibration replaces the fp16 graph and keeps the int8 record and graph
    old16 = manifest["graphs"][mf.SKETCH_ENCODER]["fp16"]["file"]
    again = commit_stages(_prepared(folder, work), [_stage(folder, work, "fp16", b"\3")])
    assert again["graphs"][mf.SKETCH_ENCODER]["fp16"]["file"] != old16 and not (folder / old16).exists()
    assert again["calibration"]["int8"] == record
    assert again["graphs"][mf.SKETCH_ENCODER]["int8"] == manifest["graphs"][mf.SKETCH_ENCODER]["int8"]


# -- arguments -------------------------------------------------------------------------------------


def test_precision_and_recipe_arguments(tmp_path):
    assert parse_precisions("fp32, int8,int8") == ["fp32", "int8"]
    with pytest.raises(DcssaError):
        parse_precisions("int4")
    assert load_recipe("search") is None
    assert load_recipe("default").blocks
    f = tmp_path / "search.json"
    f.write_text(json.dumps({"chosen": {"recipe": {"method": "entropy", "blocks": ["Mixed_5b"]}}}))
    r = load_recipe(f)
    assert (r.method, r.blocks) == ("entropy", ["Mixed_5b"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DcssaError):
        load_recipe(tmp_path / "bad.json")
    with pytest.raises(DcssaError):
        Int8Recipe(method="magic")

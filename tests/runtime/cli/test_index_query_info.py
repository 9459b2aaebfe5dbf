"""The photo matrix and the `dcssa-rt` CLI, including every failure a user can cause."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dcssa.runtime import Bundle, BundleError, Gallery, GalleryError, Retriever
from dcssa.runtime.cli import main as rt
from dcssa.runtime.stroke.pipeline import PhotoPipeline


def run(*args: str):
    return CliRunner().invoke(rt, [str(a) for a in args])


@pytest.fixture()
def photo_dir(dataset: Path, tmp_path: Path) -> Path:
    """A few photos in nested folders, plus one unreadable 'image'."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, p in enumerate(sorted((dataset / "photo").glob("*.png"))[:5]):
        shutil.copy(p, root / ("sub" if i % 2 else ".") / p.name)
    Image.open(root / "shape0000.png").convert("RGB").resize((320, 410)).save(root / "sub" / "tall.jpg")
    (root / "broken.png").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("ignored")
    return root


def test_index_embeds_recursively_and_skips_unreadable(bundle2: Path, photo_dir: Path, tmp_path: Path):
    out = tmp_path / "g"
    res = run("index", photo_dir, "--bundle", bundle2, "--out", out, "--batch-size", "2", "--json")
    assert res.exit_code == 0, res.output
    g = Gallery.load(out, Bundle.load(bundle2))
    assert sorted(g.ids) == sorted(
        ["shape0000.png", "shape0002.png", "shape0004.png", "sub/shape0001.png", "sub/shape0003.png", "sub/tall.jpg"]
    )
    assert g.meta["skipped"] == ["broken.png"]
    assert g.embeddings.dtype == np.float32 and isinstance(g.embeddings, np.memmap)
    # second path: embed each photo alone through the photo graph and compare
    from dcssa.runtime.backends import get_backend

    b = Bundle.load(bundle2)
    enc = get_backend("ort-cpu").load(b.graph_path("photo_encoder"))
    for pid, row in zip(g.ids, g.embeddings):
        x = PhotoPipeline(b.photo_recipe).preprocess(Image.open(photo_dir / pid))
        # `index` ran on --backend auto (openvino on Intel CPUs): cross-runtime parity, as elsewhere
        assert np.abs(enc.run({"images": x})["embeddings"][0] - row).max() <= 1e-4


def test_index_strict_fails_and_leaves_nothing(bundle2: Path, photo_dir: Path, tmp_path: Path):
    out = tmp_path / "g"
    res = run("index", photo_dir, "--bundle", bundle2, "--out", out, "--strict")
    assert res.exit_code != 0
    assert "broken.png" in res.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["photos"]  # no temp folder


def test_float16_storage_ranks_like_float32(bundle2: Path, photo_dir: Path, tmp_path: Path):
    (photo_dir / "broken.png").unlink()
    assert run("index", photo_dir, "--bundle", bundle2, "--out", tmp_path / "a").exit_code == 0
    assert run("index", photo_dir, "--bundle", bundle2, "--out", tmp_path / "b", "--fp16-storage").exit_code == 0
    a, b = Gallery.load(tmp_path / "a"), Gallery.load(tmp_path / "b")
    assert b.embeddings.dtype == np.float16
    q = np.asarray(a.embeddings[2], np.float32)
    assert np.abs(a.scores(q) - b.scores(q)).max() < 2e-3


def test_search_is_exact_with_ties():
    emb = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)
    g = Gallery(None, emb, ["a", "b", "c", "d"], {})
    idx, scores = g.search(np.array([1.0, 0.0], np.float32), k=3)
    assert list(idx) == [0, 2, 3]  # tie between a and c: lower index first
    assert np.allclose(scores, [1, 1, 0.6])
    idx, _ = g.search(np.array([0.0, 1.0], np.float32), k=10)
    assert list(idx) == [1, 3, 0, 2]


def test_gallery_from_another_model_is_refused(bundle2: Path, gallery2: Path, tmp_path: Path):
    g = tmp_path / "g"
    shutil.copytree(gallery2, g)
    meta = json.loads((g / "gallery.json").read_text())
    meta["photo_encoder_sha256"] = "0" * 64
    (g / "gallery.json").write_text(json.dumps(meta))
    with pytest.raises(GalleryError, match="another photo encoder"):
        Gallery.load(g, Bundle.load(bundle2))
    res = run("query", Path(__file__).parents[3] / "examples" / "strokes.json", "--bundle", bundle2, "--gallery", g)
    assert res.exit_code != 0 and "dcssa-rt index" in res.output


def test_corrupted_or_missing_bundle_files(bundle2: Path, tmp_path: Path):
    b = tmp_path / "b"
    shutil.copytree(bundle2, b)
    with open(b / "sketch_encoder.onnx", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sketch_encoder.onnx.*corrupted"):
        Retriever(Bundle.load(b), backend="ort-cpu")
    (b / "sketch_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing bundle file"):
        Retriever(Bundle.load(b), backend="ort-cpu")
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest"):
        Bundle.load(b)
    with pytest.raises(BundleError, match="dcssa-export"):
        Bundle.load(tmp_path / "nowhere")


def test_query_cli_human_and_json(bundle2: Path, gallery2: Path, dataset: Path):
    strokes = sorted((dataset / "strokes").glob("*.json"))[0]
    doc = json.loads(strokes.read_text())
    res = run("query", strokes, "--bundle", bundle2, "--gallery", gallery2, "--topk", "3", "--json",
              "--target", doc["target"], "--backend", "ort-cpu")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["stroke"] for x in lines] == list(range(1, len(doc["strokes"]) + 1))
    for x in lines:
        assert len(x["results"]) == 3 and 1 <= x["target_rank"] <= 12
        assert set(x["timings_ms"]) >= {"rasterise", "preprocess", "encode", "head", "search", "total"}
    res = run("query", strokes, "--bundle", bundle2, "--gallery", gallery2, "--topk", "2")
    assert res.exit_code == 0 and "encode" in res.output and "DEMO" in res.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "JSON"),
        ('{"strokes": [[[1, 2], [3, "x"]]]}', "stroke 0, point 1"),
        ('{"strokes": [[[1, 2], [3, NaN]]]}', "NaN"),
        ('{"strokes": [[]]}', "stroke 0"),
        ('{"lines": []}', "points"),
    ],
)
def test_query_cli_rejects_malformed_strokes(bundle2: Path, gallery2: Path, tmp_path: Path, content: str, message: str):
    f = tmp_path / "bad.json"
    f.write_text(content)
    res = run("query", f, "--bundle", bundle2, "--gallery", gallery2)
    assert res.exit_code != 0
    assert "bad.json" in res.output and message in res.output
    assert "Traceback" not in res.output


def test_query_cli_missing_bundle_and_backend(tmp_path: Path, bundle2: Path, gallery2: Path):
    strokes = Path(__file__).parents[3] / "examples" / "strokes.json"
    res = run("query", strokes, "--bundle", tmp_path / "none")
    assert res.exit_code != 0 and "dcssa-export" in res.output
    res = run("query", strokes, "--bundle", bundle2, "--gallery", gallery2, "--backend", "tensorflow")
    assert res.exit_code != 0 and "ort-cpu" in res.output


def test_info_and_help(bundle2: Path):
    res = run("info", "--bundle", bundle2, "--json")
    assert res.exit_code == 0
    doc = json.loads(res.output)
    assert doc["phase"] == 2 and "ort-cpu" in doc["backends_available"]
    for cmd in ([], ["query"], ["index"], ["info"], ["make-dataset"]):
        assert run(*cmd, "--help").exit_code == 0

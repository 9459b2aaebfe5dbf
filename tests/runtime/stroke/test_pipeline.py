"""The sketch and photo pipelines: bit-exact against torchvision, built from strictly checked recipes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from reference_raster import MEAN, STD, random_sketch, ref_raster, torchvision_transform

from dcssa.runtime.contract.recipes import PhotoRecipe, SketchRecipe, default_preprocessing
from dcssa.runtime.errors import BundleError, StrokeError
from dcssa.runtime.stroke import pipeline
from dcssa.runtime.stroke.pipeline import PhotoPipeline, SketchPipeline
from dcssa.runtime.stroke.raster import rasterize

# --------------------------------------------------------------------------------------------------


def test_preprocessor_equals_torchvision_exactly():
    transform = torchvision_transform()
    prep = SketchPipeline()
    rng = np.random.default_rng(6)
    for _ in range(12):
        pts = random_sketch(rng)
        expected = transform(Image.fromarray(ref_raster(pts)).convert("RGB")).numpy()[None]
        got = prep(rasterize(pts))
        assert got.dtype == np.float32 and got.shape == (1, 3, 299, 299)
        assert np.array_equal(got, expected)  # bit-exact, not merely close


def test_preprocessor_single_band_resize_equals_rgb_resize_on_arbitrary_grey():
    """Resizing 'L' and replicating equals resizing the RGB image, for any grey content."""
    transform = torchvision_transform()
    prep = SketchPipeline()
    rng = np.random.default_rng(7)
    for shape in [(400, 400), (123, 457), (299, 299), (50, 40)]:
        grey = rng.integers(0, 256, size=shape, dtype=np.uint8)
        rgb_resized = np.asarray(Image.fromarray(grey).convert("RGB").resize((299, 299), Image.BILINEAR))
        l_resized = np.asarray(Image.fromarray(grey).resize((299, 299), Image.BILINEAR))
        assert all(np.array_equal(rgb_resized[:, :, c], l_resized) for c in range(3))
        expected = transform(Image.fromarray(grey).convert("RGB").resize((299, 299), Image.BILINEAR)).numpy()
        assert np.array_equal(prep(grey)[0], expected)


def test_sketch_pipeline_custom_recipe_equals_torchvision():
    transforms = pytest.importorskip("torchvision.transforms")
    recipe = SketchRecipe(size=(224, 200), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    grey = rasterize(np.array([[10.0, 10.0, 0], [200.0, 240.0, 1]]))
    t = transforms.Compose(
        [transforms.Resize((224, 200)), transforms.ToTensor(), transforms.Normalize(recipe.mean, recipe.std)]
    )
    assert np.array_equal(SketchPipeline(recipe).preprocess(grey)[0], t(Image.fromarray(grey).convert("RGB")).numpy())
    with pytest.raises(StrokeError):
        SketchPipeline().preprocess(np.zeros((2, 3, 4), np.uint8))


@pytest.mark.parametrize("bad", [{"size": [299]}, {"std": [0.2, 0.0, 0.2]}, {"resample": "cubic-ish"},
                                 {"mean": [0.1, "x", 0.2]}, {"canvas": 2.5}, {"frame": -1},
                                 {"line": "wu-antialiased"}, {"scale": 1.0}, {"colour": "white"}])
def test_sketch_recipe_refuses_what_it_cannot_honour(bad):
    doc = {**SketchRecipe().to_dict(), **bad}
    with pytest.raises(BundleError) as info:
        SketchRecipe.from_dict(doc, path="b/manifest.json")
    assert "preprocessing.sketch" in str(info.value) and "b/manifest.json" in str(info.value)
    assert next(iter(bad)) in str(info.value)  # names the key


def test_recipes_round_trip_and_schema1_defaults():
    """What the exporter writes reads back equal; a schema-1 manifest's objects are accepted as they are."""
    doc = default_preprocessing()
    assert SketchRecipe.from_dict(doc["sketch"]) == SketchRecipe()
    assert PhotoRecipe.from_dict(doc["photo"]) == PhotoRecipe()
    schema1_sketch = {"frame": 256, "canvas": 400, "coordinates": "round(v / frame * canvas) in float32, half to even",
                      "line": "bresenham-0.2.1", "draw_if": "0 < x < canvas and 0 < y < canvas",
                      "dilation": {"structure": "cross3x3", "iterations": 1, "border": 0},
                      "colours": "white strokes (255) on black (0), grey replicated to RGB", "size": [299, 299],
                      "resample": "bilinear", "scale": 1.0 / 255.0, "mean": MEAN, "std": STD, "layout": "NCHW"}
    assert SketchRecipe.from_dict(schema1_sketch) == SketchRecipe()
    assert PhotoRecipe.from_dict({"mode": "RGB", "resize_shorter_side": 299, "resample": "bilinear", "min_side": 75,
                                  "scale": 1.0 / 255.0, "mean": MEAN, "std": STD, "layout": "NCHW"}) == PhotoRecipe()
    with pytest.raises(BundleError, match="unknown key"):
        PhotoRecipe.from_dict({**doc["photo"], "crop": 224})


def test_photo_pipeline_honours_the_recipes_shorter_side():
    """The manifest's resize_shorter_side is what sizes a photo (it was only honoured for a dict before)."""
    transform = torchvision_transform(224)
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(300, 410, 3), dtype=np.uint8))
    got = PhotoPipeline(PhotoRecipe(resize_shorter_side=224)).preprocess(img)
    assert got.shape == (1, 3, 224, 306)
    assert np.array_equal(got, transform(img).numpy()[None])


def test_prefixes_are_the_session_canvas_after_each_stroke():
    """prefix_images(strokes)[t] equals preprocessing the rasterised t-stroke prefix from scratch."""
    rng = np.random.default_rng(12)
    pts = random_sketch(rng, 5)
    ends = np.nonzero(pts[:, 2] == 1)[0] + 1
    strokes = [p[:, :2] for p in np.split(pts, ends) if len(p)]
    sp = SketchPipeline()
    got = sp.prefix_images(strokes)
    assert got.shape == (len(strokes), 3, 299, 299)
    for t in range(len(strokes)):
        prefix = np.vstack([np.hstack([s, np.eye(1, len(s), len(s) - 1).T]) for s in strokes[: t + 1]])
        assert np.array_equal(got[t], sp.preprocess(ref_raster(prefix).astype(np.uint8))[0])


@pytest.mark.parametrize("size", [(500, 333), (333, 500), (400, 299), (299, 451), (1001, 301), (64, 97), (299, 299)])
def test_preprocess_photo_equals_torchvision(size):
    transform = torchvision_transform()
    rng = np.random.default_rng(size[0] * 7 + size[1])
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    expected = transform(img).numpy()[None]
    got = PhotoPipeline().preprocess(img)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert min(got.shape[2:]) == 299
    assert np.array_equal(got, expected)


def test_preprocess_photo_converts_modes():
    transform = torchvision_transform()
    rng = np.random.default_rng(8)
    grey = Image.fromarray(rng.integers(0, 256, size=(300, 410), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, size=(310, 200, 4), dtype=np.uint8))
    for img in (grey, rgba):
        assert np.array_equal(PhotoPipeline().preprocess(img), transform(img.convert("RGB")).numpy()[None])


def test_photo_size_matches_torchvision_rule():
    functional = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(9)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 5000, size=(3000, 2))] + [(299, 299), (1, 4999), (4999, 1)]
    for w, h in sizes:
        new_h, new_w = functional._compute_resized_output_size((h, w), [299])
        assert pipeline.photo_size(w, h, 299) == (new_w, new_h)

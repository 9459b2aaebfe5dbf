"""IndexOptions refuses contradictions when it is made, and build_gallery's keywords of 0.1 still map
onto it (the CLI generated from it: tests/runtime/cli/test_job_options.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from tiny_bundle import write_tiny_bundle, write_tiny_photos  # noqa: E402

from dcssa.runtime import Bundle, IndexOptions, build_gallery  # noqa: E402
from dcssa.runtime.options import OptionsError  # noqa: E402
from dcssa.runtime.progress import Callbacks  # noqa: E402


@pytest.mark.parametrize("kwargs", [{"nlist": 8}, {"ef": 16}, {"shards": 2}, {"append": True, "force": True}])
def test_contradicting_settings_are_refused_when_made(kwargs):
    with pytest.raises(OptionsError):
        IndexOptions(**kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.mktemp("otiny") / "bundle", seed=0)


def test_old_keywords_build_the_same_gallery_with_a_warning(tiny, tmp_path):
    photos = write_tiny_photos(tmp_path / "photos", count=7, seed=2)
    (photos / "broken.png").write_bytes(b"not an image")
    b = Bundle.load(tiny)
    warned: list[str] = []
    new = build_gallery(photos, b, tmp_path / "new", IndexOptions(batch_size=2, fp16_storage=True),
                        report=Callbacks(warn=warned.append))
    with pytest.warns(DeprecationWarning, match="build_gallery"):
        old = build_gallery(photos, b, tmp_path / "old", batch_size=2, float16=True, progress=False,
                            warn=warned.append)
    assert old.ids == new.ids and old.embeddings.dtype == new.embeddings.dtype == np.float16
    assert np.array_equal(np.asarray(old.embeddings), np.asarray(new.embeddings))
    assert len(warned) == 2 and all("broken.png" in w for w in warned)
    with pytest.raises(TypeError, match="batchsize"):
        build_gallery(photos, b, tmp_path / "typo", batchsize=2)


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        IndexOptions().batch_size = 4  # type: ignore[misc]

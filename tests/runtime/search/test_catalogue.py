"""The catalogue fingerprint: equal for equal content wherever it lies, different when anything served changes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from tiny_bundle import write_tiny_bundle, write_tiny_gallery  # noqa: E402

from dcssa.runtime import Bundle  # noqa: E402
from dcssa.runtime.search.catalogue import FINGERPRINT_CHARS, catalogue_fingerprint, load_catalogue  # noqa: E402
from dcssa.runtime.search.gallery import Gallery  # noqa: E402


def test_fingerprint_follows_the_content_not_the_place(tmp_path):
    bundle = Bundle.load(write_tiny_bundle(tmp_path / "bundle", seed=0))
    write_tiny_gallery(bundle.path, tmp_path / "g", photos=5)
    shutil.copytree(tmp_path / "g", tmp_path / "copy")
    fp = load_catalogue(tmp_path / "g", bundle).fingerprint
    assert len(fp) == FINGERPRINT_CHARS and load_catalogue(tmp_path / "copy", bundle).fingerprint == fp
    ids = json.loads((tmp_path / "copy" / "ids.json").read_text())
    (tmp_path / "copy" / "ids.json").write_text(json.dumps(ids[::-1]))  # same photos, other rows
    assert catalogue_fingerprint(Gallery.load(tmp_path / "copy")) != fp
    (tmp_path / "g" / "confidence.json").write_text("{}")  # a calibrator changes what is served
    assert catalogue_fingerprint(Gallery.load(tmp_path / "g")) != fp


def test_in_memory_galleries_are_told_apart_by_their_rows():
    e = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    ids = [str(i) for i in range(3000)]
    changed = e.copy()
    changed[0] += 1  # a sampled row
    assert catalogue_fingerprint(Gallery(None, e, ids, {})) == catalogue_fingerprint(Gallery(None, e.copy(), ids, {}))
    assert catalogue_fingerprint(Gallery(None, e, ids, {})) != catalogue_fingerprint(Gallery(None, changed, ids, {}))
    assert catalogue_fingerprint(None) is None

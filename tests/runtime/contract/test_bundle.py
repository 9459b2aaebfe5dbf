"""Bundles written before the manifest carried graph specs (schema 1) load and serve identically."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from dcssa.runtime import Bundle, Retriever
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.errors import BundleError

SPEC_KEYS = ("state", "heavy", "f32_scopes")


def _copy_bundle(src, dst):
    """A copy whose graph files are hard links (cheap), with its own manifest."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (shutil.copy2 if f.name == mf.MANIFEST else os.link)(f, dst / f.name)
    return dst


def _as_schema1(manifest: dict) -> dict:
    """What the exporter of schema 1 wrote: graph entries with file, precision, inputs and outputs only."""
    old = json.loads(json.dumps(manifest))
    old["schema_version"] = 1
    for per in old["graphs"].values():
        for entry in per.values():
            for key in SPEC_KEYS:
                entry.pop(key, None)
    return old


def test_schema1_bundle_loads_with_the_same_specs_and_answers(bundle2, tmp_path):
    new = Bundle.load(bundle2)
    old_dir = _copy_bundle(bundle2, tmp_path / "old")
    (old_dir / mf.MANIFEST).write_text(json.dumps(_as_schema1(new.manifest)))
    old = Bundle.load(old_dir)
    assert old.describe()["upgraded_from"] == 1 and old.manifest["schema_version"] == mf.SCHEMA_VERSION
    for name in new.manifest["graphs"]:
        assert old.graph_spec(name) == new.graph_spec(name)
    assert old.graph_spec(mf.HEAD_STEP).state == {mf.PAST_KEYS: mf.KEY, mf.PAST_VALUES: mf.VALUE}
    assert old.graph_spec(mf.SKETCH_ENCODER).heavy and not old.graph_spec(mf.HEAD_STEP).heavy
    sketch = random_sketch(np.random.default_rng(5), 4)
    a, b = Retriever(new, backend="ort-cpu").session(), Retriever(old, backend="ort-cpu").session()
    for stroke in sketch:
        assert np.array_equal(a.add_stroke(stroke).embedding, b.add_stroke(stroke).embedding)


@pytest.mark.parametrize("version", [0, 3, 99, "2", None])
def test_other_schema_versions_are_refused_naming_the_version(bundle2, tmp_path, version):
    m = json.loads((bundle2 / mf.MANIFEST).read_text())
    m["schema_version"] = version
    folder = _copy_bundle(bundle2, tmp_path / "b")
    (folder / mf.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError) as info:
        Bundle.load(folder)
    text = str(info.value)
    assert repr(version) in text and str(folder / mf.MANIFEST) in text
    assert ("upgrade dcssa-rt" in text) == (isinstance(version, int) and version > mf.SCHEMA_VERSION)


def test_a_recipe_this_runtime_cannot_honour_is_refused_at_load(bundle2, tmp_path):
    m = json.loads((bundle2 / mf.MANIFEST).read_text())
    m["preprocessing"]["sketch"]["line"] = "antialiased"
    folder = _copy_bundle(bundle2, tmp_path / "b")
    (folder / mf.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="preprocessing.sketch.line"):
        Bundle.load(folder)

"""Optional packages: one way in (dcssa.runtime.extras), one error type naming the extra to install."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from dcssa.runtime.errors import BackendError, DcssaError, MissingExtra
from dcssa.runtime.extras import EXTRAS, install_hint, optional, require


def _pyproject_extras() -> dict[str, list[str]]:
    from pathlib import Path

    import tomllib

    doc = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    return doc["project"]["optional-dependencies"]


def test_every_extra_named_exists_in_pyproject():
    """A hint naming an extra that pyproject.toml lacks would send users to a failing pip command."""
    extras = _pyproject_extras()
    assert {extra for extra in EXTRAS.values()} <= set(extras)


def test_require_names_what_needs_it_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # importing it now raises ImportError
    with pytest.raises(MissingExtra) as info:
        require("faiss", "--index hnsw")
    err = info.value
    assert isinstance(err, DcssaError) and not isinstance(err, BackendError)
    assert err.message.startswith("--index hnsw needs faiss") and err.package == "faiss"
    assert err.hint == "pip install 'dcssa-rt[faiss]'"
    assert optional("faiss") is None
    assert require("json", "anything") is sys.modules["json"]


def test_hints_for_packages_no_extra_brings():
    assert "JetPack" in install_hint("tensorrt") and "dcssa-rt[cu12]" in install_hint("tensorrt")
    assert install_hint("sklearn.linear_model") == "pip install 'dcssa-rt[confidence]'"
    assert install_hint("somepkg.sub") == "pip install somepkg"


def test_index_without_faiss_says_which_extra(monkeypatch, tmp_path):
    """Before: a BackendError from a home-made import; now the one error, through the CLI, exit 2."""
    pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")
    from tiny_bundle import write_tiny_bundle

    from dcssa.runtime.cli import main

    bundle = write_tiny_bundle(tmp_path / "bundle")
    photos = tmp_path / "photos"
    photos.mkdir()
    monkeypatch.setitem(sys.modules, "faiss", None)
    res = CliRunner().invoke(main, ["index", str(photos), "--bundle", str(bundle), "--index", "hnsw", "-q"])
    assert res.exit_code == 2, res.output
    assert "needs faiss" in res.output and "pip install 'dcssa-rt[faiss]'" in res.output
    assert not (bundle / "gallery").exists()


def test_a_backend_asked_for_by_name_is_a_backend_error_naming_the_extra(monkeypatch):
    from dcssa.runtime.backends import get_backend

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError) as info:
        get_backend("openvino")
    assert "openvino" in info.value.message and "dcssa-rt[openvino]" in info.value.hint

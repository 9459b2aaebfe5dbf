"""``serve --max-batch`` above what the sketch encoder takes (a TensorRT engine's profile maximum) is cut
to that maximum, with one warning line, instead of failing every batched stroke."""

from __future__ import annotations

from tiny_bundle import write_tiny_bundle, write_tiny_gallery

from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.serve.config import ServeConfig
from dcssa.runtime.serve.service import Service


def _retriever(tmp_path) -> Retriever:
    folder = write_tiny_bundle(tmp_path / "b")
    write_tiny_gallery(folder, folder / "gallery", photos=4)
    bundle = Bundle.load(folder)
    return Retriever(bundle, Gallery.load(folder / "gallery", bundle), backend="ort-cpu")


def test_max_batch_is_clamped_to_the_engine_and_said(tmp_path, capsys):
    retriever = _retriever(tmp_path)
    retriever.encoder.max_batch = 4  # what a TensorRT runner reads from its engine's profile
    service = Service(retriever, ServeConfig(max_batch=8))
    err = capsys.readouterr().err
    assert service.config.max_batch == 4
    assert "--max-batch 8 is more than the sketch encoder's engine takes (4)" in err and "--max-batch 8`" in err
    service.start()
    try:
        assert service.batcher.max_batch == 4
    finally:
        service.close()


def test_max_batch_within_the_limit_or_without_one_is_kept(tmp_path, capsys):
    retriever = _retriever(tmp_path)
    assert Service(retriever, ServeConfig(max_batch=8)).config.max_batch == 8  # onnxruntime: no limit
    retriever.encoder.max_batch = 8
    assert Service(retriever, ServeConfig(max_batch=8)).config.max_batch == 8
    assert "warning" not in capsys.readouterr().err

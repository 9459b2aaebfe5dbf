"""Fixtures of the session-store tests: a tiny bundle and gallery, a real redis-server (or a skip)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny bundle (onnx.helper graphs) and an 8-photo gallery: strokes cost milliseconds."""
    pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")
    from tiny_bundle import write_tiny_bundle, write_tiny_gallery

    root = tmp_path_factory.mktemp("scale")
    bundle = write_tiny_bundle(root / "bundle", seed=0)
    write_tiny_gallery(bundle, root / "gallery", photos=8)
    return root


@pytest.fixture(scope="module")
def tiny_retriever(tiny):
    from dcssa.runtime import Bundle, Gallery, Retriever

    b = Bundle.load(tiny / "bundle")
    return Retriever(b, Gallery.load(tiny / "gallery", b), backend="ort-cpu", topk=5)


@pytest.fixture(scope="module")
def redis_server(tiny):
    """redis-server with deploy/redis.conf on a free loopback port (skips, naming why, if it cannot start)."""
    pytest.importorskip("redis")
    from dcssa.benchmarks.topology import Redis, Unavailable

    try:
        server = Redis(tiny / "redis").start()
    except Unavailable as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    yield server
    server.stop()

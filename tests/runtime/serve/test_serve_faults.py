"""Server faults are not client faults: a failing encoder backend is a 503, a broken gallery a 500.

The failures are injected below the server, where they happen in production: a runner that wraps
the bundle's real sketch encoder and fails on demand like a GPU losing its device (the runner base
turns that into a BackendError, as for any backend), and a gallery that fails its search like a
corrupted file. The expectation after a fault is a plain offline session of the strokes that were
applied (its scores, and the canvas those strokes draw).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.backends import Runner  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.errors import BackendError, BundleError, GalleryError, SessionError, StrokeError  # noqa: E402
from dcssa.runtime.serve import ServeConfig, create_app  # noqa: E402
from dcssa.runtime.serve.errors import (  # noqa: E402
    BadRequest,
    LimitExceeded,
    PhotoNotFound,
    ServerBusy,
    SessionNotFound,
    classify,
)

TOL = 1e-4  # batched vs single-raster encoder


class FlakyRunner(Runner):
    """The real encoder, failing on demand (a GPU that lost its device): a test double of the device."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.spec, self.input_names, self.output_names = inner.spec, inner.input_names, inner.output_names
        self.thread_safe = inner.thread_safe
        self.fail_with: Exception | None = None

    def _run_impl(self, feeds):
        if self.fail_with is not None:
            raise self.fail_with
        return self.inner.run(feeds)


class FailingGallery(Gallery):
    """The real photo matrix, whose search fails on demand (a corrupted file, or a bug)."""

    fail_with: Exception | None = None

    def search(self, query, k=10):
        if self.fail_with is not None:
            raise self.fail_with
        return super().search(query, k)


@pytest.fixture(scope="module")
def retriever(bundle2, gallery2):
    b = Bundle.load(bundle2)
    g = Gallery.load(gallery2, b)
    r = Retriever(b, FailingGallery(g.path, g.embeddings, g.ids, g.meta), backend="ort-cpu", topk=10)
    r.encoder = FlakyRunner(r.encoder)
    return r


@pytest.fixture(scope="module")
def strokes():
    return random_sketch(np.random.default_rng(11), 4)


@pytest.fixture(scope="module")
def app(retriever):
    return create_app(retriever, config=ServeConfig(max_batch=2, batch_window_ms=1))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:  # a bug's 500 is an answer, not a test crash
        yield c


@pytest.fixture(autouse=True)
def healthy(retriever):
    """Every test starts and ends with a working encoder and gallery."""
    retriever.encoder.fail_with = retriever.gallery.fail_with = None
    yield
    retriever.encoder.fail_with = retriever.gallery.fail_with = None


def post_stroke(client, sid, stroke):
    return client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": stroke.tolist()})


def assert_consistent(app, retriever, sid, applied, served=None) -> None:
    """The session holds exactly ``applied``: its canvas, and results as an offline session's."""
    session = app.state.service.store.get(sid).session
    assert session.num_strokes == len(applied)
    drawn = list(retriever.pipeline.prefixes(applied)) or [retriever.pipeline.canvas().image]
    assert np.array_equal(session.canvas.image, drawn[-1])
    if served is not None:
        offline = retriever.session()
        want = [offline.add_stroke(x) for x in applied][-1]
        assert served["stroke"] == len(applied)
        assert np.allclose([m["score"] for m in served["results"]], want.scores, atol=TOL)


def errors_total(client, kind: str) -> float:
    prefix = f'dcssa_errors_total{{kind="{kind}"}} '
    return next((float(line.split()[-1]) for line in client.get("/metrics").text.splitlines()
                 if line.startswith(prefix)), 0.0)


# -- the mapping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc, status, kind", [
    (StrokeError("x"), 422, "bad_stroke"),
    (BadRequest("x"), 422, "bad_request"),
    (SessionError("x"), 409, "session_state"),
    (SessionNotFound("x"), 404, "session_not_found"),
    (PhotoNotFound("x"), 404, "photo_not_found"),
    (LimitExceeded("x"), 413, "limit_exceeded"),
    (ServerBusy("x"), 503, "busy"),
    (BackendError("x"), 503, "backend_unavailable"),
    (BundleError("x"), 500, "server_error"),
    (GalleryError("x"), 500, "server_error"),
    (RuntimeError("x"), 500, "internal"),
])
def test_client_faults_are_4xx_server_faults_5xx(exc, status, kind):
    assert classify(exc) == (status, kind)


def test_openapi_documents_the_server_faults(client):
    spec = client.get("/openapi.json").json()
    for path, method in [("/v1/sessions", "post"), ("/v1/sessions/{session_id}/strokes", "post")]:
        responses = spec["paths"][path][method]["responses"]
        for code in ("500", "503"):
            assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert "backend_unavailable" in spec["paths"]["/v1/sessions"]["post"]["responses"]["503"]["description"]


# -- the encoder backend fails: 503, the stroke never happened --------------------------------------------


def test_backend_failure_is_503_and_the_stroke_is_not_applied(app, client, retriever, strokes, caplog):
    sid = client.post("/v1/sessions").json()["id"]
    assert post_stroke(client, sid, strokes[0]).status_code == 200
    before = errors_total(client, "backend_unavailable")
    retriever.encoder.fail_with = RuntimeError("CUDA error: device lost")
    with caplog.at_level(logging.ERROR, logger="dcssa.serve"):
        r = post_stroke(client, sid, strokes[3])  # a stroke that must leave no trace on the canvas
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    body = r.json()
    assert set(body) == {"error", "message", "hint"} and body["error"] == "backend_unavailable"
    assert "device lost" in body["message"] and body["hint"]
    assert errors_total(client, "backend_unavailable") == before + 1
    assert any(rec.exc_info and "backend_unavailable" in rec.getMessage() for rec in caplog.records)
    assert client.get(f"/v1/sessions/{sid}").json()["stroke"] == 1
    assert_consistent(app, retriever, sid, [strokes[0]])

    retriever.encoder.fail_with = None  # the device is back: the session carries on as if nothing happened
    r = post_stroke(client, sid, strokes[1])
    assert r.status_code == 200
    assert_consistent(app, retriever, sid, [strokes[0], strokes[1]], r.json())


def test_backend_failure_during_a_rebuild_leaves_no_session(app, client, retriever, strokes):
    store = app.state.service.store
    held = len(store)
    retriever.encoder.fail_with = RuntimeError("device lost")
    r = client.post("/v1/sessions", json={"strokes": [s.tolist() for s in strokes[:2]]})
    assert r.status_code == 503 and r.json()["error"] == "backend_unavailable"
    assert len(store) == held


def test_backend_failure_over_the_websocket(app, client, retriever, strokes):
    sid = client.post("/v1/sessions").json()["id"]
    with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
        ws.send_text(json.dumps({"op": "stroke", "stroke": strokes[0].tolist()}))
        assert ws.receive_json()["stroke"] == 1
        retriever.encoder.fail_with = RuntimeError("device lost")
        ws.send_text(json.dumps({"op": "stroke", "stroke": strokes[3].tolist()}))
        msg = ws.receive_json()
        assert msg["op"] == "stroke" and msg["status"] == 503 and msg["error"] == "backend_unavailable"
        assert "device lost" in msg["message"]
        retriever.encoder.fail_with = None
        ws.send_text(json.dumps({"op": "state"}))  # the socket stayed open, the session unchanged
        assert ws.receive_json()["stroke"] == 1
        ws.send_text(json.dumps({"op": "stroke", "stroke": strokes[1].tolist()}))
        msg = ws.receive_json()
    assert_consistent(app, retriever, sid, [strokes[0], strokes[1]], msg)


# -- the gallery or bundle side fails: 500, the operator's problem ------------------------------------------


def test_gallery_fault_is_500_server_error_with_its_hint(app, client, retriever, strokes, caplog):
    sid = client.post("/v1/sessions").json()["id"]
    retriever.gallery.fail_with = GalleryError("corrupted embeddings.npy", hint="re-index the catalogue")
    with caplog.at_level(logging.ERROR, logger="dcssa.serve"):
        r = post_stroke(client, sid, strokes[0])
    assert r.status_code == 500 and "retry-after" not in r.headers
    assert r.json() == {"error": "server_error", "message": "corrupted embeddings.npy", "hint": "re-index the catalogue"}
    assert any("corrupted embeddings.npy" in rec.getMessage() for rec in caplog.records)
    retriever.gallery.fail_with = None
    assert_consistent(app, retriever, sid, [])
    r = post_stroke(client, sid, strokes[0])
    assert r.status_code == 200
    assert_consistent(app, retriever, sid, [strokes[0]], r.json())


def test_bundle_fault_over_the_websocket_is_500(client, retriever, strokes):
    sid = client.post("/v1/sessions").json()["id"]
    retriever.encoder.fail_with = BundleError("sketch_encoder.onnx is corrupted")  # a DcssaError passes through
    with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
        ws.send_text(json.dumps({"op": "stroke", "stroke": strokes[0].tolist()}))
        msg = ws.receive_json()
        assert msg["status"] == 500 and msg["error"] == "server_error" and "corrupted" in msg["message"]
        ws.send_text(json.dumps({"op": "undo"}))  # still a client fault: nothing to undo
        msg = ws.receive_json()
        assert msg["status"] == 409 and msg["error"] == "session_state"


def test_a_bug_is_500_internal_without_details(app, client, retriever, strokes, caplog):
    sid = client.post("/v1/sessions").json()["id"]
    retriever.gallery.fail_with = IndexError("secret detail of the server")
    with caplog.at_level(logging.ERROR, logger="dcssa.serve"):
        r = post_stroke(client, sid, strokes[0])
    assert r.status_code == 500
    assert r.json() == {"error": "internal", "message": "internal server error", "hint": "see the server log"}
    assert any(rec.exc_info and rec.exc_info[0] is IndexError for rec in caplog.records)  # the operator sees it
    assert_consistent(app, retriever, sid, [])


def test_client_faults_stay_4xx_while_the_backend_is_down(client, retriever):
    """A request the server refuses before any encoder work is the client's fault even now."""
    sid = client.post("/v1/sessions").json()["id"]
    retriever.encoder.fail_with = RuntimeError("device lost")
    assert client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": []}).status_code == 422
    assert client.post(f"/v1/sessions/{sid}/strokes", json={"drawing": [[[1, 2], [3]]]}).json()["error"] == "bad_stroke"
    assert client.post("/v1/sessions/nope/strokes", json={"stroke": [[1.0, 2.0]]}).status_code == 404
    assert client.post(f"/v1/sessions/{sid}/undo").status_code == 409

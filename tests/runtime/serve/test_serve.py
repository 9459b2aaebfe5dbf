"""`dcssa-rt serve`: the API against offline sessions, every error path, isolation, the batcher.

The expectation is always a second code path: a plain ``StrokeSession.add_stroke`` on the same
strokes (one encoder call per stroke, no batching, no HTTP), or the encoder run one raster at a time.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.cli import main as cli  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.serve import DynamicBatcher, ServeConfig, create_app, session_memory_bound  # noqa: E402
from dcssa.runtime.serve.photos import PhotoStore  # noqa: E402
from dcssa.runtime.stroke.parse import parse_strokes  # noqa: E402

TOL = 1e-4  # batched vs single-raster encoder: same maths, different summation order


@pytest.fixture(scope="module")
def retriever(bundle2, gallery2):
    b = Bundle.load(bundle2)
    return Retriever(b, Gallery.load(gallery2, b), backend="ort-cpu", topk=10)


@pytest.fixture(scope="module")
def sketches():
    rng = np.random.default_rng(5)
    return [random_sketch(rng, 4) for _ in range(4)]


def offline(retriever, strokes):
    """The expectation: a plain session, one add_stroke per stroke."""
    s = retriever.session()
    return [s.add_stroke(x) for x in strokes]


def assert_same_topk(served: dict, want, retriever) -> None:
    """Equal top-K up to near-ties: served scores match, and the served ids score (offline) like the best K."""
    ids = [m["id"] for m in served["results"]]
    got = np.array([m["score"] for m in served["results"]])
    assert served["stroke"] == want.stroke
    assert np.allclose(got, want.scores, atol=TOL)
    scores = retriever.gallery.scores(want.embedding)
    pos = {pid: i for i, pid in enumerate(retriever.gallery.ids)}
    assert np.allclose(scores[[pos[i] for i in ids]], want.scores, atol=TOL)
    if np.min(np.abs(np.diff(want.scores))) > 2 * TOL:  # no near-tie: the order must be identical
        assert ids == want.ids


def canvas_frame(stroke: np.ndarray, w: float = 400.0, h: float = 300.0) -> list:
    """A 256-frame stroke expressed in a w x h canvas frame (inverse of the runtime's mapping)."""
    s = 256.0 / max(w, h)
    xy = stroke.copy()
    xy[:, 0] = (xy[:, 0] - (256.0 - s * w) / 2) / s
    xy[:, 1] = (xy[:, 1] - (256.0 - s * h) / 2) / s
    return xy.tolist()


@pytest.fixture(scope="module")
def client(retriever):
    app = create_app(retriever, config=ServeConfig(max_batch=4, batch_window_ms=2, max_points=300,
                                                   max_body_bytes=64 * 1024, max_sessions=50))
    with TestClient(app) as c:
        yield c


def new_session(client, body=None) -> str:
    r = client.post("/v1/sessions", json=body) if body is not None else client.post("/v1/sessions")
    assert r.status_code == 201, r.text
    return r.json()["id"]


# -- happy paths ----------------------------------------------------------------------------------


def test_session_lifecycle_matches_offline(client, retriever, sketches):
    strokes = sketches[0]
    want = offline(retriever, strokes[:3])
    sid = new_session(client)
    assert len(sid) >= 22  # token_urlsafe(18): 144 random bits
    states = []
    for t, stroke in enumerate(strokes[:3]):
        r = client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": canvas_frame(stroke), "frame": [400, 300]})
        assert r.status_code == 200, r.text
        st = r.json()
        assert st["id"] == sid and st["batch_size"] >= 1
        assert {"rasterise", "preprocess", "queue", "encode", "head", "search", "total"} <= set(st["timings_ms"])
        assert len(st["results"]) == 10
        assert all(m["url"] == "/v1/photos/" + m["id"] for m in st["results"])
        assert_same_topk(st, want[t], retriever)
        states.append(st)
    r = client.post(f"/v1/sessions/{sid}/undo")
    assert r.status_code == 200 and r.json()["stroke"] == 2
    assert r.json()["results"] == states[1]["results"]
    assert client.get(f"/v1/sessions/{sid}").json()["results"] == states[1]["results"]
    r = client.post(f"/v1/sessions/{sid}/reset")
    assert r.json()["stroke"] == 0 and r.json()["results"] == []
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    r = client.get(f"/v1/sessions/{sid}")
    assert r.status_code == 404 and r.json()["error"] == "session_not_found"


def test_rebuild_from_strokes_equals_stroke_by_stroke(client, retriever, sketches):
    strokes = sketches[1][:3]
    body = {"strokes": [canvas_frame(s, 500, 500) for s in strokes], "frame": [500, 500]}
    want = offline(retriever, parse_strokes(body))
    r = client.post("/v1/sessions", json=body)
    assert r.status_code == 201
    st = r.json()
    assert st["stroke"] == 3
    assert_same_topk(st, want[-1], retriever)
    # the rebuilt session continues like the original would
    more = client.post(f"/v1/sessions/{st['id']}/strokes", json={"stroke": sketches[1][3].tolist()})
    assert_same_topk(more.json(), offline(retriever, parse_strokes(body) + [sketches[1][3]])[-1], retriever)


def test_every_stroke_form_is_accepted(client, retriever, sketches):
    xy = sketches[2][0]
    forms = {
        "stroke": {"stroke": xy.tolist()},
        "strokes": {"strokes": [xy.tolist()]},
        "points": {"points": [[x, y, 0] for x, y in xy[:-1].tolist()] + [[*xy[-1].tolist(), 1]]},
        "drawing": {"drawing": [[xy[:, 0].tolist(), xy[:, 1].tolist()]]},
    }
    want = offline(retriever, [xy])[0]
    for name, body in forms.items():
        sid = new_session(client)
        r = client.post(f"/v1/sessions/{sid}/strokes", json=body)
        assert r.status_code == 200, (name, r.text)
        assert_same_topk(r.json(), want, retriever)


def test_websocket_carries_the_same_messages(client, retriever, sketches):
    strokes = sketches[3][:2]
    want = offline(retriever, strokes)
    sid = new_session(client)
    with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
        for t, s in enumerate(strokes):
            ws.send_text(json.dumps({"op": "stroke", "stroke": s.tolist()}))
            msg = ws.receive_json()
            assert msg["op"] == "stroke"
            assert_same_topk(msg, want[t], retriever)
        ws.send_text("not json")
        bad = ws.receive_json()
        assert bad["status"] == 422 and bad["error"] == "bad_request"
        ws.send_text(json.dumps({"op": "stroke", "stroke": [[1, "x"]]}))
        assert ws.receive_json()["status"] == 422
        ws.send_text(json.dumps({"op": "undo"}))  # the socket survived the errors
        msg = ws.receive_json()
        assert msg["stroke"] == 1
        assert_same_topk(msg, want[0], retriever)
    with client.websocket_connect("/v1/sessions/nope/ws") as ws:
        assert ws.receive_json()["status"] == 404
        with pytest.raises(Exception) as exc:
            ws.receive_json()
        assert getattr(exc.value, "code", None) == 4404


# -- client errors: 4xx JSON with a message, and the server keeps serving (server faults: test_serve_faults.py) ------------------------------------

STROKE = [[10.0, 10.0], [60.0, 40.0]]


def raw(client, path, text, ctype="application/json"):
    return client.post(path, content=text.encode(), headers={"content-type": ctype})


@pytest.mark.parametrize(
    "case, send, status, kind",
    [
        ("nan", lambda c, p: raw(c, p, '{"stroke": [[1, 2], [NaN, 3]]}'), 422, "invalid_request"),
        ("infinity", lambda c, p: raw(c, p, '{"stroke": [[1, Infinity]]}'), 422, "invalid_request"),
        ("string coordinate", lambda c, p: c.post(p, json={"stroke": [[1, "2"]]}), 422, "invalid_request"),
        ("bool coordinate", lambda c, p: c.post(p, json={"stroke": [[True, 2]]}), 422, "invalid_request"),
        ("wrong nesting", lambda c, p: c.post(p, json={"stroke": [1, 2, 3]}), 422, "invalid_request"),
        ("empty stroke", lambda c, p: c.post(p, json={"stroke": []}), 422, "invalid_request"),
        ("no stroke", lambda c, p: c.post(p, json={}), 422, "bad_request"),
        ("two forms", lambda c, p: c.post(p, json={"stroke": STROKE, "strokes": [STROKE]}), 422, "bad_request"),
        ("two strokes", lambda c, p: c.post(p, json={"strokes": [STROKE, STROKE]}), 422, "invalid_request"),
        ("x and y lengths differ", lambda c, p: c.post(p, json={"drawing": [[[1, 2, 3], [4, 5]]]}), 422, "bad_stroke"),
        ("unknown key", lambda c, p: c.post(p, json={"stroke": STROKE, "colour": "red"}), 422, "invalid_request"),
        ("bad frame", lambda c, p: c.post(p, json={"stroke": STROKE, "frame": [0, 10]}), 422, "invalid_request"),
        ("too many points", lambda c, p: c.post(p, json={"stroke": [[i % 200, 5.0] for i in range(301)]}), 422, "bad_stroke"),
        ("bad JSON", lambda c, p: raw(c, p, '{"stroke": [[1, 2]'), 422, "invalid_request"),
        ("not an object", lambda c, p: c.post(p, json=[1, 2]), 422, "invalid_request"),
        ("huge coordinate", lambda c, p: c.post(p, json={"stroke": [[1e35, 2.0]]}), 422, "bad_stroke"),
        ("degenerate frame", lambda c, p: c.post(p, json={"stroke": STROKE, "frame": [1e-310, 1e-310]}), 422, "bad_stroke"),
        ("oversized body", lambda c, p: raw(c, p, '{"stroke": [' + ",".join(["[1.0, 2.0]"] * 8000) + "]}"), 413, "limit_exceeded"),
    ],
)
def test_bad_strokes_are_4xx_json(client, case, send, status, kind):
    sid = new_session(client)
    r = send(client, f"/v1/sessions/{sid}/strokes")
    assert r.status_code == status, (case, r.text)
    body = r.json()
    assert body["error"] == kind and body["message"], case
    st = client.get(f"/v1/sessions/{sid}").json()  # the session is untouched and the server serves on
    assert st["stroke"] == 0


def test_session_errors(client, retriever, sketches):
    r = client.post("/v1/sessions/unknown-id/strokes", json={"stroke": STROKE})
    assert r.status_code == 404 and "POST /v1/sessions" in r.json()["hint"]
    sid = new_session(client)
    r = client.post(f"/v1/sessions/{sid}/undo")
    assert r.status_code == 409 and "nothing to undo" in r.json()["message"]
    assert client.delete("/v1/sessions/unknown-id").status_code == 404
    assert client.get("/no/such/route").status_code == 404 and client.get("/no/such/route").json()["error"] == "http_404"
    assert client.put(f"/v1/sessions/{sid}").status_code == 405
    # rebuild bodies are checked before any encoder work
    r = client.post("/v1/sessions", json={"drawing": [[[1, 2], [3, 4]], [[1, 2, 3], [4, 5]]]})
    assert r.status_code == 422 and "stroke 1" in r.json()["message"]
    assert client.post("/v1/sessions", json={"strokes": [STROKE, []]}).status_code == 422


def test_two_phase_stroke_api_guards_its_order(retriever, sketches):
    s = retriever.session()
    s.prepare_stroke(sketches[0][0])
    with pytest.raises(Exception, match="already being processed"):
        s.prepare_stroke(sketches[0][1])
    with pytest.raises(Exception, match="being processed"):
        s.undo()
    s.abort_stroke()
    assert not s.canvas.image.any() and s.num_strokes == 0
    with pytest.raises(Exception, match="without prepare_stroke"):
        s.finish_stroke(np.zeros((1, retriever.bundle.feature_dim), np.float32))


def test_expiry_and_lru_cap(retriever):
    clock = [0.0]
    app = create_app(retriever, config=ServeConfig(max_sessions=2, session_ttl=60))
    store = app.state.service.store
    store.clock = lambda: clock[0]
    with TestClient(app) as c:
        a, b = new_session(c), new_session(c)
        c.get(f"/v1/sessions/{a}")  # a is now the most recently used
        new_session(c)  # over the cap: b (least recently used) goes
        assert c.get(f"/v1/sessions/{b}").status_code == 404
        assert c.get(f"/v1/sessions/{a}").status_code == 200
        clock[0] = 61.0
        r = c.get(f"/v1/sessions/{a}")
        assert r.status_code == 404 and r.json()["error"] == "session_not_found"
        assert len(store) == 0
        metrics = c.get("/metrics").text
        assert 'dcssa_sessions_dropped_total{reason="evicted"} 1.0' in metrics
        assert 'dcssa_sessions_dropped_total{reason="expired"} 2.0' in metrics


def test_stroke_bound_per_session(bundle2, gallery2, sketches):
    b = Bundle.load(bundle2)
    r = Retriever(b, Gallery.load(gallery2, b), backend="ort-cpu", max_strokes=2)
    with TestClient(create_app(r)) as c:
        too_many = {"strokes": [s.tolist() for s in sketches[0][:3]]}
        res = c.post("/v1/sessions", json=too_many)
        assert res.status_code == 422 and "bound of 2" in res.json()["message"]
        sid = new_session(c, {"strokes": [s.tolist() for s in sketches[0][:2]]})
        res = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": sketches[0][2].tolist()})
        assert res.status_code == 409 and res.json()["error"] == "session_state"
        assert c.get(f"/v1/sessions/{sid}").json()["stroke"] == 2


def test_session_memory_bound_covers_a_full_session(bundle2, sketches):
    r = Retriever(Bundle.load(bundle2), backend="ort-cpu", max_strokes=3)
    s = r.session()
    for x in sketches[0][:3]:
        s.add_stroke(x)
    held = (s.canvas._img.nbytes + s.head.keys.nbytes + s.head.values.nbytes
            + sum(h.nbytes for h in s.canvas._history)
            + sum(q.feature.nbytes + q.embedding.nbytes + q.indices.nbytes + q.scores.nbytes for q in s._results))
    bound = session_memory_bound(r)
    assert held <= bound["total"] - bound["in_flight_raster"]
    d = r.bundle.feature_dim
    assert bound["kv_cache"] == 2 * 3 * d * 4  # two float32 (T, D) caches: 2048-dim features, 4 bytes each


# -- photos -----------------------------------------------------------------------------------------


def test_photos_only_indexed_files(client, retriever, tmp_path):
    gallery = retriever.gallery
    pid = gallery.ids[0]
    root = PhotoStore(gallery, None).root
    r = client.get(f"/v1/photos/{pid}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    with Image.open(root / pid) as orig:
        assert max(thumb.size) <= 256
        assert abs(thumb.size[0] / thumb.size[1] - orig.size[0] / orig.size[1]) < 0.02
    full = client.get(f"/v1/photos/{pid}", params={"size": "full"})
    assert full.status_code == 200 and full.content == (root / pid).read_bytes()
    for bad in ("../gallery.json", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "nope.png", "%2e%2e/x"):
        r = client.get(f"/v1/photos/{bad}")
        assert r.status_code == 404, bad
    # a tampered id list cannot reach outside the root either
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "link.png").symlink_to(outside)

    class Fake:
        ids = ["../secret.png", "link.png"]
        meta: dict = {}

    store = PhotoStore(Fake(), tmp_path / "photos")
    for pid in Fake.ids:
        with pytest.raises(Exception, match="missing under the photos folder"):
            store.path(pid)


def test_metrics_and_health(client):
    before = client.get("/metrics").text
    sid = new_session(client)
    client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": STROKE})
    client.post("/v1/sessions/nope/undo")
    text = client.get("/metrics").text

    def value(metrics: str, name: str) -> float:
        for line in metrics.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    for key in ('dcssa_stroke_phase_seconds_count{phase="encode"}', "dcssa_encoder_batch_size_count",
                'dcssa_errors_total{kind="session_not_found"}', "dcssa_strokes_total"):
        assert value(text, key) == value(before, key) + 1, key
    assert value(text, "dcssa_active_sessions") >= 1
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["gallery"] == 12 and h["photos"] is True


# -- concurrency: isolation, ordering, batching ---------------------------------------------------------


def test_concurrent_sessions_are_isolated_and_batched(retriever, sketches):
    app = create_app(retriever, config=ServeConfig(max_batch=4, batch_window_ms=50))
    service = app.state.service

    async def client_draws(c, strokes):
        sid = (await c.post("/v1/sessions")).json()["id"]
        last = None
        for s in strokes:
            r = await c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": s.tolist()})
            assert r.status_code == 200, r.text
            last = r.json()
        return last

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*(client_draws(c, sk[:3]) for sk in sketches))

    try:
        finals = asyncio.run(main())
        stats = service.batcher.stats
    finally:
        service.close()
    for sk, st in zip(sketches, finals):
        assert_same_topk(st, offline(retriever, sk[:3])[-1], retriever)
    assert stats.items == 12  # every stroke went through the batcher exactly once
    print(f"12 strokes of 4 concurrent sessions in {stats.batches} encoder calls (largest {stats.largest})")


def test_overlapping_requests_of_one_session_apply_in_order(retriever, sketches):
    app = create_app(retriever, config=ServeConfig(max_batch=4, batch_window_ms=20))
    strokes = sketches[0]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            sid = (await c.post("/v1/sessions")).json()["id"]
            rs = await asyncio.gather(*(c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": s.tolist()}) for s in strokes))
            return [r.json() for r in rs]

    try:
        states = asyncio.run(main())
    finally:
        app.state.service.close()
    order = [st["stroke"] for st in states]
    assert sorted(order) == [1, 2, 3, 4]  # no lost or doubled update
    applied = [strokes[order.index(t)] for t in (1, 2, 3, 4)]  # the order the server applied them
    want = offline(retriever, applied)
    for st in states:
        assert_same_topk(st, want[st["stroke"] - 1], retriever)


def test_batch_of_several_sessions_equals_one_at_a_time(retriever, sketches):
    """Rasters of K sessions in ONE encoder call give the features and top-K of K separate calls."""
    sessions = [retriever.session() for _ in sketches]
    images = [s.prepare_stroke(sk[0]) for s, sk in zip(sessions, sketches)]
    batcher = DynamicBatcher(retriever.encoder, max_batch=len(images), window_ms=5000)
    try:
        futures = [batcher.submit(x) for x in images]  # all queued long before the window closes
        outs = [f.result(timeout=300) for f in futures]
    finally:
        batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.largest == len(images)
    assert all(n == len(images) for _, _, n in outs)
    for s, sk, x, (feature, timings, _) in zip(sessions, sketches, images, outs):
        single = retriever.encoder.run({"images": x})["features"]
        assert np.abs(feature - single).max() <= TOL
        res = s.finish_stroke(feature, timings)
        want = offline(retriever, [sk[0]])[0]
        assert np.abs(res.embedding - want.embedding).max() <= TOL
        assert_same_topk({"stroke": res.stroke, "results": [{"id": i, "score": float(v)} for i, v in zip(res.ids, res.scores)]},
                         want, retriever)


def test_batcher_refuses_when_full_and_reports_encoder_errors(retriever):
    import threading

    gate = threading.Event()

    class Slow:
        def run(self, feeds):
            gate.wait(60)
            if feeds["images"].shape[0] == 3:
                raise RuntimeError("boom")
            return {"features": np.zeros((feeds["images"].shape[0], 4), np.float32)}

    from dcssa.runtime.serve.errors import ServerBusy

    b = DynamicBatcher(Slow(), max_batch=3, window_ms=0, max_queue=3)
    try:
        x = np.zeros((1, 3, 4, 4), np.float32)
        first = b.submit(x)  # taken by the worker, blocked in run()
        while b.queued:  # wait until the worker holds it (bounded by the gate's 60 s)
            pass
        queued = [b.submit(x) for _ in range(3)]
        with pytest.raises(ServerBusy):
            b.submit(x)
        gate.set()
        assert first.result(60)[0].shape == (1, 4)
        for f in queued:  # the three queued ones ran as one batch, which failed: each gets the error
            with pytest.raises(RuntimeError, match="boom"):
                f.result(60)
    finally:
        gate.set()
        b.close()


# -- the CLI ---------------------------------------------------------------------------------------------


def test_serve_cli_errors_are_one_line(bundle2, gallery2, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["serve", "--bundle", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no bundle folder here" in res.output and "Traceback" not in res.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = runner.invoke(cli, ["serve", "--bundle", str(bundle2), "--gallery", str(gallery2),
                                  "--backend", "ort-cpu", "--port", str(port)])
    assert res.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in res.output

"""Both session stores behind the same API: in-memory and Redis (a real redis-server), same tests.

The expectation is an offline :class:`StrokeSession` on the same strokes. The Redis variant also
shows what only a shared store can do: two app instances (two replicas) serving one session, and a
session restored from its stored state continuing exactly like the original.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")

from click.testing import CliRunner  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from dcssa.runtime.cli import main as cli  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.serve import ServeConfig, create_app  # noqa: E402
from dcssa.runtime.session import StrokeSession  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def sketches():
    rng = np.random.default_rng(23)
    return [random_sketch(rng, 5) for _ in range(4)]


def store_url(request, kind: str) -> str:
    return "memory" if kind == "memory" else request.getfixturevalue("redis_server").url


def app_for(retriever, store: str, **limits):
    return create_app(retriever, config=ServeConfig(session_store=store, max_batch=4, batch_window_ms=1,
                                                    store_timeout=1.0, **limits))


@pytest.fixture(params=["memory", "redis"])
def client(request, tiny_retriever):
    with TestClient(app_for(tiny_retriever, store_url(request, request.param))) as c:
        yield c


def offline(retriever, strokes):
    s = retriever.session()
    return [s.add_stroke(x) for x in strokes]


def same_topk(served: dict, want) -> None:
    assert served["stroke"] == want.stroke
    assert [m["id"] for m in served["results"]] == want.ids
    assert np.allclose([m["score"] for m in served["results"]], want.scores, atol=TOL)


def test_lifecycle_matches_offline(client, tiny_retriever, sketches):
    strokes = sketches[0]
    want = offline(tiny_retriever, strokes)
    sid = client.post("/v1/sessions").json()["id"]
    for t, xy in enumerate(strokes):
        r = client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": xy.tolist()})
        assert r.status_code == 200, r.text
        same_topk(r.json(), want[t])
    same_topk(client.post(f"/v1/sessions/{sid}/undo").json(), want[-2])
    same_topk(client.get(f"/v1/sessions/{sid}").json(), want[-2])
    # after an undo the next stroke replaces the dropped one (its K/V row too)
    same_topk(client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[-1].tolist()}).json(), want[-1])
    r = client.post(f"/v1/sessions/{sid}/reset")
    assert r.json()["stroke"] == 0 and r.json()["results"] == []
    again = offline(tiny_retriever, sketches[1][:2])
    for t, xy in enumerate(sketches[1][:2]):
        same_topk(client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": xy.tolist()}).json(), again[t])
    client.post(f"/v1/sessions/{sid}/reset")
    r = client.post(f"/v1/sessions/{sid}/undo")
    assert r.status_code == 409 and r.json()["error"] == "session_state"
    assert client.delete(f"/v1/sessions/{sid}").status_code == 204
    r = client.get(f"/v1/sessions/{sid}")
    assert r.status_code == 404 and "POST /v1/sessions" in r.json()["hint"]
    assert client.delete(f"/v1/sessions/{sid}").status_code == 404


def test_rebuild_with_the_strokes_so_far(client, tiny_retriever, sketches):
    strokes = sketches[2]
    want = offline(tiny_retriever, strokes)
    r = client.post("/v1/sessions", json={"strokes": [x.tolist() for x in strokes[:4]]})
    assert r.status_code == 201
    same_topk(r.json(), want[3])
    sid = r.json()["id"]
    same_topk(client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[4].tolist()}).json(), want[4])
    same_topk(client.post(f"/v1/sessions/{sid}/undo").json(), want[3])


def test_a_retried_stroke_applies_once(client, tiny_retriever, sketches):
    """``after`` (the client's stroke count before the stroke) makes the page's retry safe."""
    strokes = sketches[1][:3]
    want = offline(tiny_retriever, strokes)
    sid = client.post("/v1/sessions").json()["id"]
    for t, xy in enumerate(strokes[:2]):
        same_topk(client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": xy.tolist(), "after": t}).json(), want[t])
    # the reply of stroke 2 was lost and the client sends it again: applied once
    again = client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[1].tolist(), "after": 1})
    assert again.status_code == 200
    same_topk(again.json(), want[1])
    r = client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[2].tolist(), "after": 0})
    assert r.status_code == 409 and r.json()["error"] == "session_out_of_step"
    assert "2 strokes" in r.json()["message"] and "POST /v1/sessions" in r.json()["hint"]
    same_topk(client.post(f"/v1/sessions/{sid}/strokes", json={"stroke": strokes[2].tolist(), "after": 2}).json(),
              want[2])


def test_websocket(client, tiny_retriever, sketches):
    strokes = sketches[3][:3]
    want = offline(tiny_retriever, strokes)
    sid = client.post("/v1/sessions").json()["id"]
    with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
        for t, xy in enumerate(strokes):
            ws.send_json({"op": "stroke", "stroke": xy.tolist()})
            same_topk(ws.receive_json(), want[t])
        ws.send_json({"op": "undo"})
        same_topk(ws.receive_json(), want[1])
    with client.websocket_connect("/v1/sessions/nope/ws") as ws:
        assert ws.receive_json()["status"] == 404


def test_health_names_the_store(client):
    h = client.get("/healthz").json()
    assert h["session_store"] in ("memory", "redis")


# -- what only the shared store does ---------------------------------------------------------------------


def test_two_replicas_serve_one_session(tiny_retriever, redis_server, sketches):
    """Strokes alternate between two app instances on one Redis: every answer equals offline."""
    strokes = sketches[0]
    want = offline(tiny_retriever, strokes)
    a_app, b_app = app_for(tiny_retriever, redis_server.url), app_for(tiny_retriever, redis_server.url)
    with TestClient(a_app) as a, TestClient(b_app) as b:
        sid = a.post("/v1/sessions").json()["id"]
        for t, xy in enumerate(strokes):
            c = (a, b)[t % 2]
            same_topk(c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": xy.tolist()}).json(), want[t])
        same_topk(a.post(f"/v1/sessions/{sid}/undo").json(), want[-2])  # a's cache was stale: rebuilt
        same_topk(b.get(f"/v1/sessions/{sid}").json(), want[-2])
        rebuilt = [app.state.service.metrics.rebuild.collect()[0] for app in (a_app, b_app)]
        counts = [next(s.value for s in m.samples if s.name.endswith("_count")) for m in rebuilt]
        assert all(n >= 2 for n in counts), counts  # each replica restored the session from Redis


def test_restore_continues_like_the_original(tiny_retriever, sketches):
    strokes = sketches[1]
    original = tiny_retriever.session()
    for xy in strokes[:3]:
        original.add_stroke(xy)
    keys, values = original.kv_rows()
    restored = StrokeSession.restore(tiny_retriever, original.strokes, keys.copy(), values.copy(),
                                     original.results())
    assert np.array_equal(restored.canvas.image, original.canvas.image)
    a, b = original.add_stroke(strokes[3]), restored.add_stroke(strokes[3])
    assert a.ids == b.ids and np.array_equal(a.scores, b.scores)
    # the confidence features build on the previous stroke's (top-1 held for how long, score change)
    assert a.signals is not None and np.array_equal(a.signals, b.signals)
    assert restored.undo().ids == original.undo().ids
    assert np.array_equal(restored.canvas.image, original.canvas.image)


def test_stored_results_round_trip_exactly(tiny_retriever, sketches):
    from dcssa.runtime.serve.sessions import decode_result, encode_result

    s = tiny_retriever.session()
    for xy in sketches[2][:3]:
        r = s.add_stroke(xy)
    r.confidence = {"top1": 0.123456789012345, "top10": 0.9}  # as a calibrator would set it
    back = decode_result(encode_result(r))
    assert back.ids == r.ids and np.array_equal(back.indices, r.indices) and np.array_equal(back.scores, r.scores)
    assert np.array_equal(back.embedding, r.embedding) and np.array_equal(back.signals, r.signals)
    assert back.confidence == r.confidence and back.stroke == r.stroke


def test_unreachable_store_is_503_not_500(tiny_retriever):
    from dcssa.benchmarks.topology import free_port

    pytest.importorskip("redis")
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with TestClient(app_for(tiny_retriever, dead)) as c:
        for method, path in [("post", "/v1/sessions"), ("get", "/v1/sessions/abc"),
                             ("post", "/v1/sessions/abc/undo")]:
            r = getattr(c, method)(path)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            body = r.json()
            assert body["error"] == "store_unavailable" and "nothing was applied" in body["message"]
            assert "127.0.0.1" in body["hint"]
        assert c.get("/healthz").json()["session_store"] == "redis"


def test_a_full_redis_is_503_and_nothing_is_half_written(tiny_retriever, redis_server, sketches):
    """deploy/redis.conf refuses writes at maxmemory (noeviction): the stroke is a 503, not applied."""
    r = redis_server.client()
    with TestClient(app_for(tiny_retriever, redis_server.url)) as c:
        sid = c.post("/v1/sessions").json()["id"]
        want = offline(tiny_retriever, sketches[0][:2])
        same_topk(c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": sketches[0][0].tolist()}).json(), want[0])
        limit = r.config_get("maxmemory")["maxmemory"]
        r.config_set("maxmemory", 1)
        try:
            res = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": sketches[0][1].tolist()})
            assert res.status_code == 503 and res.json()["error"] == "store_unavailable"
            assert "full" in res.json()["message"] and "maxmemory" in res.json()["hint"]
        finally:
            r.config_set("maxmemory", limit)
        assert c.get(f"/v1/sessions/{sid}").json()["stroke"] == 1
        same_topk(c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": sketches[0][1].tolist()}).json(), want[1])


def test_a_session_with_a_key_gone_is_404_to_rebuild(tiny_retriever, redis_server, sketches):
    """Keys expire one by one: a session missing one of its lists is gone, not a 500 or a wrong answer."""
    from dcssa.runtime.serve.sessions import keys_of

    with TestClient(app_for(tiny_retriever, redis_server.url)) as a:
        sid = a.post("/v1/sessions", json={"strokes": [x.tolist() for x in sketches[1][:2]]}).json()["id"]
    redis_server.client().delete(keys_of(sid)[1])  # its rows (strokes, results, K/V)
    with TestClient(app_for(tiny_retriever, redis_server.url)) as b:  # a replica without it in its cache
        r = b.get(f"/v1/sessions/{sid}")
        assert r.status_code == 404 and "POST /v1/sessions" in r.json()["hint"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "localhost:6379", "redis"])
def test_a_bad_store_url_is_a_one_line_error(url, tiny):
    r = CliRunner().invoke(cli, ["serve", "--bundle", str(tiny / "bundle"), "--gallery", str(tiny / "gallery"),
                                 "--session-store", url, "--port", "0"])
    assert r.exit_code != 0
    assert "redis://HOST:6379/0" in r.output and "Traceback" not in r.output

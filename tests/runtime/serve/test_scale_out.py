"""Scale-out serving as deployed: redis-server + 3 ``dcssa-rt serve`` replicas + nginx, all real, on loopback.

Every expectation is an offline :class:`StrokeSession` on the same strokes (one encoder call per
stroke, no HTTP, no store). Each test is bounded (a few strokes of the tiny bundle); anything that
cannot be started here (redis-server, nginx) skips with the reason, never passes silently.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("redis")
pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from dcssa.benchmarks.topology import Nginx, Replica, Unavailable, call  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.serve.sessions import keys_of, unpack_row  # noqa: E402

TOL = 1e-5
TTL = 600  # seconds: long enough that no test's session expires by accident (the expiry test has its own replica)
STORE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def retriever(tiny_retriever):
    return tiny_retriever


@pytest.fixture(scope="module")
def cluster(tiny, redis_server):
    """3 replicas sharing redis_server, nginx round-robin in front."""
    replicas = [Replica(tiny / "bundle", tiny / "gallery", redis_server.url, tiny / "logs", "--topk", "5",
                        "--session-ttl", str(TTL), "--store-timeout", str(STORE_TIMEOUT),
                        "--batch-window-ms", "20") for _ in range(3)]
    try:
        for r in replicas:
            r.start()
        lb = Nginx([r.port for r in replicas], tiny / "nginx").start()
    except BaseException as exc:
        for r in replicas:
            r.stop()
        if isinstance(exc, Unavailable):
            pytest.skip(f"cannot start the topology: {exc}")
        raise
    yield replicas, lb
    lb.stop()
    for r in replicas:
        r.stop()


@pytest.fixture(scope="module")
def sketches():
    rng = np.random.default_rng(11)
    return [random_sketch(rng, 6) for _ in range(6)]


def offline(retriever, strokes):
    s = retriever.session()
    return s, [s.add_stroke(x) for x in strokes]


def same_topk(served: dict, want) -> None:
    assert served["stroke"] == want.stroke
    assert [m["id"] for m in served["results"]] == want.ids
    assert np.allclose([m["score"] for m in served["results"]], want.scores, atol=TOL)


def metric(port: int, name: str) -> float:
    """A counter of one replica, read from its /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def strokes_served(port: int) -> float:
    return metric(port, "dcssa_strokes_total")


def stroke_body(xy: np.ndarray, after: int | None = None) -> dict:
    return {"stroke": xy.tolist()} if after is None else {"stroke": xy.tolist(), "after": after}


# -- the same answers as one offline session, whatever replica serves each stroke ---------------------------


def test_strokes_spread_over_replicas_match_offline(cluster, retriever, sketches):
    replicas, lb = cluster
    before = [strokes_served(r.port) for r in replicas]
    strokes = sketches[0]
    _, want = offline(retriever, strokes)
    status, st = call(lb.port, "POST", "/v1/sessions")
    assert status == 201, st
    sid = st["id"]
    for t, xy in enumerate(strokes):
        status, st = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(xy))
        assert status == 200, st
        same_topk(st, want[t])
    after = [strokes_served(r.port) for r in replicas]
    assert sum(a - b for a, b in zip(after, before)) == len(strokes)
    assert all(a > b for a, b in zip(after, before)), "round robin should have sent strokes to every replica"
    # undo through the balancer: the previous result, whichever replica answers
    status, st = call(lb.port, "POST", f"/v1/sessions/{sid}/undo")
    assert status == 200
    same_topk(st, want[-2])
    for _ in range(3):
        status, st = call(lb.port, "GET", f"/v1/sessions/{sid}")
        same_topk(st, want[-2])


def test_websocket_through_the_balancer(cluster, retriever, sketches):
    from websockets.sync.client import connect

    replicas, lb = cluster
    strokes = sketches[1]
    _, want = offline(retriever, strokes)
    status, st = call(lb.port, "POST", "/v1/sessions")
    sid = st["id"]
    before = [strokes_served(r.port) for r in replicas]
    for t, xy in enumerate(strokes):  # one socket per stroke: each may land on another replica
        with connect(f"ws://127.0.0.1:{lb.port}/v1/sessions/{sid}/ws", open_timeout=10) as ws:
            ws.send(json.dumps({"op": "stroke", **stroke_body(xy)}))
            msg = json.loads(ws.recv(timeout=30))
        assert msg["op"] == "stroke" and "status" not in msg, msg
        same_topk(msg, want[t])
    after = [strokes_served(r.port) for r in replicas]
    assert sum(a > b for a, b in zip(after, before)) >= 2, "the sockets should have reached several replicas"
    with connect(f"ws://127.0.0.1:{lb.port}/v1/sessions/{sid}/ws") as ws:  # several messages on one socket
        ws.send(json.dumps({"op": "undo"}))
        same_topk(json.loads(ws.recv(timeout=30)), want[-2])
        ws.send(json.dumps({"op": "state"}))
        same_topk(json.loads(ws.recv(timeout=30)), want[-2])


# -- faults ----------------------------------------------------------------------------------------------


def test_kill_9_a_replica_mid_sketch(cluster, retriever, sketches):
    replicas, lb = cluster
    strokes = sketches[2]
    _, want = offline(retriever, strokes)
    _, st = call(lb.port, "POST", "/v1/sessions")
    sid = st["id"]
    for t in range(3):
        _, st = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(strokes[t], t))
        same_topk(st, want[t])
    victim = replicas[0]
    victim.kill()
    try:
        for t in range(3, len(strokes)):  # call() retries once, as the page does ("after" keeps it safe)
            status, st = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(strokes[t], t))
            assert status == 200, st
            same_topk(st, want[t])
        status, st = call(lb.port, "GET", f"/v1/sessions/{sid}")
        assert st["stroke"] == len(strokes)  # nothing lost, nothing applied twice
    finally:
        victim.start()


def test_concurrent_strokes_on_two_replicas(cluster, retriever, sketches, redis_server):
    """Two strokes of one session sent at once to two replicas: both applied, one after the other."""
    replicas, _ = cluster
    a, b = replicas[1], replicas[2]
    strokes = sketches[3]
    _, st = call(a.port, "POST", "/v1/sessions")
    sid = st["id"]
    conflicts = [metric(r.port, "dcssa_store_conflicts_total") for r in (a, b)]
    counts: list[int] = []
    for i in range(0, len(strokes), 2):
        results: dict[int, tuple[int, dict]] = {}
        go = threading.Barrier(2)

        def send(port: int, xy: np.ndarray, slot: int) -> None:
            go.wait()
            results[slot] = call(port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(xy), retry=False)

        threads = [threading.Thread(target=send, args=(r.port, strokes[i + j], j)) for j, r in enumerate((a, b))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert {s for s, _ in results.values()} == {200}, results
        counts += sorted(st["stroke"] for _, st in results.values())
    assert counts == list(range(1, len(strokes) + 1))  # each stroke got its own position: no lost update
    refused = sum(metric(r.port, "dcssa_store_conflicts_total") for r in (a, b)) - sum(conflicts)
    # the barrier and the 20 ms batch window make both replicas read the same version: the
    # version check must have refused (and the replica re-applied) at least one commit
    assert refused >= 1, "no conflicting commit happened: the concurrent path was not exercised"
    # the stored order decides the expectation: an offline session fed the strokes in that order
    r = redis_server.client()
    state, stored = keys_of(sid)
    rows = [unpack_row(raw) for raw in r.lrange(stored, 0, -1)]
    order = [xy for xy, _, _ in rows]
    assert int(r.hget(state, "strokes")) == len(order) == len(strokes)
    assert sorted(x.tobytes() for x in order) == sorted(np.asarray(x, np.float64).tobytes() for x in strokes)
    session, want = offline(retriever, order)
    keys, values = session.kv_rows()
    kv = np.stack([row for _, _, row in rows])
    assert np.allclose(kv[:, 0], keys, atol=TOL) and np.allclose(kv[:, 1], values, atol=TOL)
    for replica in (a, b):
        _, st = call(replica.port, "GET", f"/v1/sessions/{sid}")
        same_topk(st, want[-1])


def test_redis_restart_keeps_sessions_and_an_outage_is_503(cluster, retriever, sketches, redis_server):
    replicas, lb = cluster
    strokes = sketches[4]
    _, want = offline(retriever, strokes)
    _, st = call(lb.port, "POST", "/v1/sessions")
    sid = st["id"]
    for t in range(3):
        _, st = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(strokes[t]))
    redis_server.stop()  # SIGTERM: redis flushes its AOF (RDB snapshots are off in deploy/redis.conf)
    try:
        for path, body in [(f"/v1/sessions/{sid}/strokes", stroke_body(strokes[3])), ("/v1/sessions", None)]:
            t0 = time.monotonic()
            status, err = call(lb.port, "POST", path, body, retry=False)
            assert status == 503 and err["error"] == "store_unavailable", err
            assert "session store" in err["message"] and "Redis" in err["hint"]
            assert time.monotonic() - t0 < 2 * STORE_TIMEOUT + 5  # bounded, no hang
        status, err = call(lb.port, "GET", f"/v1/sessions/{sid}", retry=False)
        assert status == 503
    finally:
        redis_server.start()  # same port, same dir: replays the AOF
    for t in range(3, len(strokes)):  # the replicas reconnect by themselves
        status, st = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(strokes[t]))
        assert status == 200, st
        same_topk(st, want[t])


def test_session_ttl_is_refreshed_and_expiry_is_404_with_the_rebuild_hint(tiny, cluster, retriever, sketches,
                                                                           redis_server):
    replicas, lb = cluster
    _, st = call(lb.port, "POST", "/v1/sessions")
    sid = st["id"]
    call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(sketches[5][0]))
    r = redis_server.client()
    assert all(TTL * 1000 - 5000 < r.pttl(k) <= TTL * 1000 for k in keys_of(sid))
    # a replica with a 1 s TTL (the CLI's minimum) on the same store
    short = Replica(tiny / "bundle", tiny / "gallery", redis_server.url, tiny / "logs", "--topk", "5",
                    "--session-ttl", "1").start()
    try:
        strokes = sketches[5][:3]
        _, st = call(short.port, "POST", "/v1/sessions")
        sid = st["id"]
        for xy in strokes:
            status, st = call(short.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(xy))
        time.sleep(1.6)
        status, err = call(short.port, "POST", f"/v1/sessions/{sid}/strokes", stroke_body(sketches[5][3]))
        assert status == 404 and err["error"] == "session_not_found"
        assert "POST /v1/sessions" in err["hint"] and "strokes drawn so far" in err["hint"]
        assert r.exists(*keys_of(sid)) == 0
        # the hint works: rebuild with the strokes so far, through the balancer, and continue
        status, st = call(lb.port, "POST", "/v1/sessions", {"strokes": [x.tolist() for x in strokes]})
        assert status == 201, st
        _, want = offline(retriever, [*strokes, sketches[5][3]])
        same_topk(st, want[2])
        status, st = call(lb.port, "POST", f"/v1/sessions/{st['id']}/strokes", stroke_body(sketches[5][3]))
        same_topk(st, want[3])
    finally:
        short.stop()


# -- limits over a real socket ------------------------------------------------------------------------------

BIG = json.dumps({"stroke": [[123.456, 67.891]] * 200_000}).encode()  # a 200k-point stroke, 3.8 MB
THREE_MB = b'{"stroke": [' + b" " * (3 << 20) + b"[1, 2]]}"


@pytest.mark.parametrize("body", [BIG, THREE_MB], ids=["200k-points", "3MB"])
@pytest.mark.parametrize("where", ["replica", "nginx"])
def test_an_oversized_body_gets_the_413_json_not_a_reset(cluster, body, where):
    import urllib.error
    import urllib.request

    replicas, lb = cluster
    port = replicas[1].port if where == "replica" else lb.port
    _, st = call(port, "POST", "/v1/sessions")
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/sessions/{st['id']}/strokes", data=body,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 413
    err = json.loads(info.value.read())
    assert err == {"error": "limit_exceeded", "message": "request body over 1048576 bytes",
                   "hint": "send one stroke per request, or simplify strokes"}


def test_an_oversized_chunked_body_gets_the_413_json(cluster):
    replicas, _ = cluster
    conn = http.client.HTTPConnection("127.0.0.1", replicas[1].port, timeout=30)
    conn.request("POST", "/v1/sessions", body=iter([b"x" * 100_000] * 30), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"] == "limit_exceeded"
    conn.close()


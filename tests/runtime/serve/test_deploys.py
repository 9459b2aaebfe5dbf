"""Deploys and catalogue updates as operated: redis-server + 3 ``dcssa-rt serve`` replicas + nginx, all real.

- SIGTERM drains a replica: /healthz turns 503 draining, requests still in flight finish, a
  WebSocket is closed with 1012 (service restart), the process exits 0 within its grace period;
- a rolling restart of the three replicas under load loses no stroke: every stroke ends 200 for a
  client that retries as the page does, and every session's final state equals an offline session
  on the same strokes (a stroke applied twice or lost would change it);
- a catalogue swap mid-sketch (the --gallery folder replaced, SIGHUP to each replica): the next
  stroke equals an offline session drawn on the new gallery from the first stroke, and responses
  name the catalogue that answered (an old/new mix across replicas is visible while it rolls).

Anything that cannot be started here (redis-server, nginx) skips with the reason.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("redis")
pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from dcssa.benchmarks.topology import FAIL_TIMEOUT_S, Nginx, Replica, Unavailable, call, page_call  # noqa: E402
from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.search.catalogue import load_catalogue  # noqa: E402
from dcssa.runtime.serve.sessions import keys_of  # noqa: E402

TOL = 1e-5
GRACE = 5.0
COMMON = ("--topk", "5", "--session-ttl", "600", "--store-timeout", "1", "--batch-window-ms", "5",
          "--grace-period", str(GRACE))


def offline(tiny, gallery, strokes):
    b = Bundle.load(tiny / "bundle")
    s = Retriever(b, Gallery.load(gallery, b), backend="ort-cpu", topk=5).session()
    return [s.add_stroke(x) for x in strokes]


def same(served: dict, want) -> None:
    assert served["stroke"] == want.stroke
    assert [m["id"] for m in served["results"]] == want.ids
    assert np.allclose([m["score"] for m in served["results"]], want.scores, atol=TOL)


def start_all(replicas):
    try:
        for r in replicas:
            r.start()
    except Unavailable as exc:
        for r in replicas:
            r.stop()
        pytest.skip(f"cannot start a replica: {exc}")


@pytest.fixture()
def folder(tiny, tmp_path):
    """The replicas' --gallery folder: a copy of the tiny gallery the tests may replace."""
    shutil.copytree(tiny / "gallery", tmp_path / "gallery")
    return tmp_path / "gallery"


@pytest.fixture()
def cluster(tiny, redis_server, folder, tmp_path):
    replicas = [Replica(tiny / "bundle", folder, redis_server.url, tmp_path / "logs", *COMMON) for _ in range(3)]
    start_all(replicas)
    try:
        lb = Nginx([r.port for r in replicas], tmp_path / "nginx").start()
    except Unavailable as exc:
        for r in replicas:
            r.stop()
        pytest.skip(f"cannot start nginx: {exc}")
    yield replicas, lb
    lb.stop()
    for r in replicas:
        r.stop()


def test_sigterm_drains_healthz_websocket_and_exits_0(tiny, redis_server, folder, tmp_path):
    ws_client = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import ConnectionClosed

    replica = Replica(tiny / "bundle", folder, redis_server.url, tmp_path / "logs", *COMMON, "--drain-delay", "3")
    start_all([replica])
    try:
        port = replica.port
        assert call(port, "GET", "/healthz")[1]["status"] == "ok"
        sid = call(port, "POST", "/v1/sessions")[1]["id"]
        xy = random_sketch(np.random.default_rng(0), 2)
        with ws_client.connect(f"ws://127.0.0.1:{port}/v1/sessions/{sid}/ws", open_timeout=10) as ws:
            t0 = time.monotonic()
            replica.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            status, body = call(port, "GET", "/healthz", retry=False)
            assert (status, body["status"]) == (503, "draining")
            status, body = call(port, "POST", f"/v1/sessions/{sid}/strokes",
                                {"stroke": xy[0].tolist(), "after": 0}, retry=False)
            assert status == 200 and body["stroke"] == 1  # still served while draining
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=GRACE + 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # service restart: reconnect
        assert replica.proc.wait(GRACE + 15) == 0
        assert time.monotonic() - t0 < 3 + GRACE + 10
        assert redis_server.client().hget(keys_of(sid)[0], "strokes") == b"1"  # committed before exit
    finally:
        replica.stop()


def draw(port: int, sketch, log: dict, stop: threading.Event) -> None:
    """One client drawing one sketch stroke by stroke, retrying as the page does."""
    status, body, seen = page_call(port, "POST", "/v1/sessions", {})
    log["seen"] += seen
    if status != 201:
        log["failed"].append(("create", status, body))
        return
    sid, done = body["id"], []
    for i, xy in enumerate(sketch):
        if stop.is_set():
            break
        status, body, seen = page_call(port, "POST", f"/v1/sessions/{sid}/strokes",
                                       {"stroke": xy.tolist(), "after": i})
        log["seen"] += seen
        if status != 200 or body["stroke"] != i + 1:
            log["failed"].append(("stroke", status, body))
            break
        done.append(xy)
    log["sessions"].append((sid, done))


def test_rolling_restart_under_load_loses_no_stroke(tiny, cluster, redis_server, folder, tmp_path):
    replicas, lb = cluster
    stop = threading.Event()
    log = {"seen": [], "failed": [], "sessions": []}

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            draw(lb.port, random_sketch(rng, 5), log, stop)

    clients = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in clients:
        t.start()
    restarted = []
    try:
        time.sleep(1)
        for i, old in enumerate(replicas):
            old.proc.send_signal(signal.SIGTERM)
            assert old.proc.wait(GRACE + 15) == 0  # drained and exited cleanly
            new = Replica(tiny / "bundle", folder, redis_server.url, tmp_path / "logs", *COMMON, port=old.port)
            new.start()
            replicas[i] = new
            restarted.append(new)
            # back in nginx's rotation only after fail_timeout: stopping the next one sooner leaves a
            # single replica, and one slow answer from it takes every upstream out (a 502 after the retry)
            time.sleep(FAIL_TIMEOUT_S + 1)
    finally:
        time.sleep(1)
        stop.set()
        for t in clients:
            t.join(60)
    assert not log["failed"], log["failed"][:3]
    strokes = sum(len(done) for _, done in log["sessions"])
    assert len(log["sessions"]) >= 6 and strokes >= 20  # the restarts really happened under load
    for sid, done in log["sessions"]:  # each stroke applied exactly once: the state equals offline
        status, body = call(lb.port, "GET", f"/v1/sessions/{sid}")
        assert status == 200 and body["stroke"] == len(done)
        if done:
            same(body, offline(tiny, folder, done)[-1])
    retried = [s for s in log["seen"] if s in (0, 502, 503)]
    print(json.dumps({"sessions": len(log["sessions"]), "strokes": strokes, "retried_once": len(retried)}))


def test_catalogue_swap_mid_sketch_across_replicas(tiny, cluster, folder):
    from tiny_bundle import write_tiny_gallery

    replicas, lb = cluster
    new_src = write_tiny_gallery(tiny / "bundle", folder.parent / "new-gallery", photos=6, seed=7).path
    sketch = random_sketch(np.random.default_rng(4), 3)
    old_fp = call(replicas[0].port, "GET", "/healthz")[1]["catalogue"]
    sid = call(lb.port, "POST", "/v1/sessions")[1]["id"]
    for i, xy in enumerate(sketch[:2]):
        status, body = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", {"stroke": xy.tolist(), "after": i})
        assert status == 200 and body["catalogue"] == old_fp

    staged = folder.parent / "gallery.staged"  # as `dcssa-rt index --out GALLERY --force` replaces it
    shutil.copytree(new_src, staged)
    shutil.rmtree(folder)
    staged.rename(folder)
    new_fp = load_catalogue(folder, Bundle.load(tiny / "bundle")).fingerprint
    assert new_fp != old_fp

    def fingerprints():
        return [call(r.port, "GET", "/healthz")[1]["catalogue"] for r in replicas]

    def wait_for(want, i):
        end = time.monotonic() + 20
        while fingerprints()[i] != want and time.monotonic() < end:
            time.sleep(0.1)

    replicas[0].proc.send_signal(signal.SIGHUP)
    wait_for(new_fp, 0)
    assert fingerprints() == [new_fp, old_fp, old_fp]  # the rolling mix, visible per replica
    for i, r in enumerate(replicas[1:], 1):
        r.proc.send_signal(signal.SIGHUP)
        wait_for(new_fp, i)
    assert fingerprints() == [new_fp] * 3 and all(r.proc.poll() is None for r in replicas)

    want = offline(tiny, folder, sketch)  # drawn on the new gallery from the first stroke
    status, body = call(lb.port, "POST", f"/v1/sessions/{sid}/strokes", {"stroke": sketch[2].tolist(), "after": 2})
    assert status == 200 and body["catalogue"] == new_fp
    same(body, want[2])
    status, body = call(lb.port, "POST", f"/v1/sessions/{sid}/undo")
    assert status == 200
    same(body, want[1])

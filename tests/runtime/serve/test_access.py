"""Who may call and how fast: API keys, per-principal sessions, rate limits, session quotas, Origin/CORS.

In-process (TestClient) against the tiny bundle; the same behaviour through real nginx, Redis with
ACL users and replica processes is in test_public.py, and in Chromium in test_public_page.py.
Expectations are independent: offline sessions for results, hand-computed token-bucket arithmetic.
"""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest

pytest.importorskip("fastapi")

from click.testing import CliRunner  # noqa: E402
from fastapi import Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from dcssa.runtime.cli import main as cli  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.serve import ServeConfig, create_app  # noqa: E402
from dcssa.runtime.serve.keys import KeyRing, add_key, read_keys, revoke  # noqa: E402
from dcssa.runtime.serve.ratelimit import TokenBucket  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def sketches():
    rng = np.random.default_rng(5)
    return [random_sketch(rng, 4) for _ in range(3)]


def body(xy) -> dict:
    return {"stroke": np.asarray(xy).tolist()}


def app_with(retriever, **config):
    app = create_app(retriever, config=ServeConfig(max_batch=4, batch_window_ms=1, **config))

    @app.get("/whoami")  # the contract with the admin endpoint (issue 33b): request.state.principal
    async def whoami(request: Request) -> dict:
        return {"principal": request.state.principal, "client": request.state.client}

    return app


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# -- the keys file ------------------------------------------------------------------------------------


def test_api_key_cli_prints_once_stores_a_hash_and_revokes(tmp_path):
    path = tmp_path / "keys.json"
    run = CliRunner().invoke
    r = run(cli, ["api-key", "add", "alice", "--file", str(path)])
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert key.startswith("dcssa_") and len(key) > 50
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key.rsplit("_", 1)[1] not in text  # only a hash is stored
    record = read_keys(path)[0]
    assert record.principal == "alice" and record.matches(key) and not record.matches(key[:-1] + "x")
    r2 = run(cli, ["api-key", "add", "bob", "--file", str(path), "--json"])
    doc = json.loads(r2.stdout)
    assert doc["principal"] == "bob" and doc["key"] != key
    listed = json.loads(run(cli, ["api-key", "list", "--file", str(path), "--json"]).stdout)
    assert [d["principal"] for d in listed] == ["alice", "bob"]
    assert all(set(d) == {"id", "principal", "created"} for d in listed)  # no hash, no salt, no key
    plain = run(cli, ["api-key", "list", "--file", str(path)]).stdout
    assert key not in plain and doc["key"] not in plain
    gone = json.loads(run(cli, ["api-key", "revoke", doc["id"], "--file", str(path), "--json"]).stdout)
    assert [g["principal"] for g in gone] == ["bob"]
    assert [r.principal for r in read_keys(path)] == ["alice"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    bad = run(cli, ["api-key", "revoke", "nobody", "--file", str(path)])
    assert bad.exit_code != 0 and "api-key list" in bad.output and "Traceback" not in bad.output
    bad = run(cli, ["api-key", "add", "no spaces", "--file", str(path)])
    assert bad.exit_code != 0 and "principal name" in bad.output


def test_a_broken_keys_file_is_one_clear_error(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    r = CliRunner().invoke(cli, ["api-key", "list", "--file", str(path)])
    assert r.exit_code != 0 and str(path) in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["serve", "--api-keys", str(tmp_path / "missing.json"), "--port", "0"])
    assert r.exit_code != 0 and "missing.json" in r.output and "api-key add" in r.output


def test_the_key_ring_follows_the_file_and_keeps_the_last_good_keys(tmp_path, caplog):
    path = tmp_path / "keys.json"
    _, a = add_key(path, "alice")
    ring = KeyRing(path)
    assert ring.principal(a) == "alice" and ring.principal(a[:-2] + "zz") is None and ring.principal("junk") is None
    _, b = add_key(path, "bob")
    assert ring.principal(b) == "bob"  # picked up without a restart
    revoke(path, "alice")
    assert ring.principal(a) is None and ring.principal(b) == "bob"
    with caplog.at_level(logging.ERROR, "dcssa.serve"):
        path.write_text("{half an edit")
        assert ring.principal(b) == "bob"  # the last good keys stay in use
    assert "not reloaded" in caplog.text and b not in caplog.text


# -- authentication over HTTP and WebSocket --------------------------------------------------------------


@pytest.fixture()
def keyed(tmp_path, tiny_retriever):
    path = tmp_path / "keys.json"
    keys = {name: add_key(path, name)[1] for name in ("alice", "bob")}
    with TestClient(app_with(tiny_retriever, api_keys=path)) as c:
        yield c, keys, path


def test_no_key_or_a_wrong_key_is_401_json_and_the_key_is_never_echoed(keyed, sketches, caplog):
    c, keys, _ = keyed
    wrong = keys["alice"][:-4] + "AAAA"
    with caplog.at_level(logging.DEBUG):
        for headers, kind in [({}, "needs an API key"), (bearer(wrong), "not valid"),
                              ({"Authorization": "Basic dXNlcjpwYXNz"}, "not valid")]:
            for method, path in [("post", "/v1/sessions"), ("get", "/v1/photos/x"), ("get", "/openapi.json"),
                                 ("post", "/v1/sessions/abc/strokes")]:
                r = getattr(c, method)(path, headers=headers, **({"json": body(sketches[0][0])} if "strokes" in path else {}))
                assert r.status_code == 401, (path, r.text)
                err = r.json()
                assert set(err) == {"error", "message", "hint"} and err["error"] == "unauthorized"
                assert kind in err["message"] and "api-key add" in err["hint"]
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert wrong not in r.text and "Traceback" not in r.text
    assert wrong not in caplog.text and keys["alice"] not in caplog.text
    for open_path in ("/healthz", "/metrics", "/"):  # the operator's probes and the static page
        assert c.get(open_path).status_code == 200
    metrics = c.get("/metrics").text
    assert 'dcssa_errors_total{kind="unauthorized"} 12.0' in metrics


def test_a_session_is_reachable_only_by_its_principal(keyed, tiny_retriever, sketches):
    c, keys, _ = keyed
    a, b = bearer(keys["alice"]), bearer(keys["bob"])
    assert c.get("/whoami", headers=a).json() == {"principal": "alice", "client": "alice"}
    sid = c.post("/v1/sessions", headers=a).json()["id"]
    assert len(sid) == 24  # 144 random bits, unchanged by scoping
    want = tiny_retriever.session()
    st = c.post(f"/v1/sessions/{sid}/strokes", json=body(sketches[0][0]), headers=a).json()
    res = want.add_stroke(sketches[0][0])
    assert st["id"] == sid and [m["id"] for m in st["results"]] == res.ids
    for method, path in [("get", ""), ("post", "/strokes"), ("post", "/undo"), ("post", "/reset"), ("delete", "")]:
        kw = {"json": body(sketches[0][1])} if path == "/strokes" else {}
        r = getattr(c, method)(f"/v1/sessions/{sid}{path}", headers=b, **kw)
        assert r.status_code == 404 and r.json()["error"] == "session_not_found", (method, path)
    st = c.get(f"/v1/sessions/{sid}", headers=a).json()  # untouched by bob's attempts
    assert st["stroke"] == 1 and np.allclose([m["score"] for m in st["results"]], res.scores, atol=TOL)


def test_the_websocket_takes_the_key_as_a_subprotocol(keyed, tiny_retriever, sketches):
    c, keys, _ = keyed
    sid = c.post("/v1/sessions", headers=bearer(keys["alice"])).json()["id"]
    with c.websocket_connect(f"/v1/sessions/{sid}/ws", subprotocols=["dcssa.v1", "dcssa.key." + keys["alice"]]) as ws:
        assert ws.accepted_subprotocol == "dcssa.v1"  # the fixed name is echoed, never the key
        ws.send_text(json.dumps({"op": "stroke", **body(sketches[1][0])}))
        msg = ws.receive_json()
        assert msg["op"] == "stroke" and msg["stroke"] == 1
        assert [m["id"] for m in msg["results"]] == tiny_retriever.session().add_stroke(sketches[1][0]).ids
    with c.websocket_connect(f"/v1/sessions/{sid}/ws", headers=bearer(keys["alice"])) as ws:  # non-browser clients
        ws.send_text(json.dumps({"op": "state"}))
        assert ws.receive_json()["stroke"] == 1
    for protocols, status, code in [(["dcssa.v1"], 401, 4401), (["dcssa.v1", "dcssa.key.dcssa_0_x"], 401, 4401),
                                    (["dcssa.v1", "dcssa.key." + keys["bob"]], 404, 4404)]:
        with c.websocket_connect(f"/v1/sessions/{sid}/ws", subprotocols=protocols) as ws:
            msg = ws.receive_json()
            assert msg["status"] == status and "dcssa_0_x" not in json.dumps(msg)
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == code


def test_a_revoked_key_is_refused_on_the_next_request(keyed):
    c, keys, path = keyed
    assert c.post("/v1/sessions", headers=bearer(keys["bob"])).status_code == 201
    r = CliRunner().invoke(cli, ["api-key", "revoke", "bob", "--file", str(path)])
    assert r.exit_code == 0
    assert c.post("/v1/sessions", headers=bearer(keys["bob"])).status_code == 401
    assert c.post("/v1/sessions", headers=bearer(keys["alice"])).status_code == 201


def test_without_keys_the_principal_is_none_and_the_client_its_address(tiny_retriever):
    with TestClient(app_with(tiny_retriever)) as c:
        assert c.get("/whoami").json() == {"principal": None, "client": "testclient"}


def test_a_principal_named_by_the_authenticating_proxy(tiny_retriever):
    """--principal-header: the proxy in front checked who calls; sessions are per principal as with keys."""
    with TestClient(app_with(tiny_retriever, principal_header="X-Dcssa-Principal")) as c:
        r = c.post("/v1/sessions")
        assert r.status_code == 401 and "proxy" in r.json()["message"]
        alice, bob = {"X-Dcssa-Principal": "alice"}, {"X-Dcssa-Principal": "bob"}
        assert c.get("/whoami", headers=alice).json() == {"principal": "alice", "client": "alice"}
        sid = c.post("/v1/sessions", headers=alice).json()["id"]
        assert c.get(f"/v1/sessions/{sid}", headers=bob).status_code == 404
        assert c.get(f"/v1/sessions/{sid}", headers=alice).status_code == 200
        assert c.get("/healthz").status_code == 200
    with pytest.raises(Exception, match="both name the caller"):
        ServeConfig(principal_header="X-P", api_keys="keys.json")


# -- rate limits ------------------------------------------------------------------------------------


def test_token_bucket_arithmetic():
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    for _ in range(3):
        bucket.take("a")
    with pytest.raises(Exception) as over:
        bucket.take("a")
    assert over.value.retry_after == 1  # 1 token at 2/s: 0.5 s, rounded up to whole seconds
    bucket.take("b")  # another client has its own bucket
    now[0] = 0.5  # one token back
    bucket.take("a")
    assert bucket.wait("a") == pytest.approx(0.5)
    now[0] = 10.0  # refills up to the burst, not beyond
    bucket.take("a", cost=8)  # admitted with a token, then in debt: 3 - 8 = -5
    assert bucket.wait("a") == pytest.approx(3.0)  # (1 - (-5)) / 2
    with pytest.raises(Exception) as over:
        bucket.take("a")
    assert over.value.retry_after == 3


def test_over_the_stroke_rate_is_429_with_retry_after_and_others_are_not_slowed(tmp_path, tiny_retriever, sketches):
    path = tmp_path / "keys.json"
    keys = {name: add_key(path, name)[1] for name in ("greedy", "polite")}
    with TestClient(app_with(tiny_retriever, api_keys=path, rate_limit=0.5, rate_burst=2)) as c:
        g, p = bearer(keys["greedy"]), bearer(keys["polite"])
        sid = c.post("/v1/sessions", headers=g).json()["id"]
        codes = [c.post(f"/v1/sessions/{sid}/strokes", json=body(x), headers=g).status_code for x in sketches[0][:3]]
        assert codes == [200, 200, 429]
        r = c.post(f"/v1/sessions/{sid}/strokes", json=body(sketches[0][2]), headers=g)
        assert r.status_code == 429 and int(r.headers["retry-after"]) in (1, 2)  # 1 token at 0.5/s: <= 2 s
        err = r.json()
        assert set(err) == {"error", "message", "hint"} and err["error"] == "rate_limited" and "0.5/s" in err["message"]
        assert c.get(f"/v1/sessions/{sid}", headers=g).json()["stroke"] == 2  # refused strokes were not applied
        # refused before the body is read or parsed: a malformed one is a 429 too, not a 422
        r = c.post(f"/v1/sessions/{sid}/strokes", content=b"{not json", headers={**g, "Content-Type": "application/json"})
        assert r.status_code == 429
        psid = c.post("/v1/sessions", headers=p).json()["id"]
        assert c.post(f"/v1/sessions/{psid}/strokes", json=body(sketches[1][0]), headers=p).status_code == 200
        # a rebuild is admitted whole (one token) and paid for afterwards
        strokes = [np.asarray(x).tolist() for x in sketches[2]]
        r = c.post("/v1/sessions", json={"strokes": strokes}, headers=p)
        assert r.status_code == 201 and r.json()["stroke"] == len(strokes)
        r = c.post(f"/v1/sessions/{psid}/strokes", json=body(sketches[1][1]), headers=p)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 2 * (len(strokes) - 1) - 1
        with c.websocket_connect(f"/v1/sessions/{sid}/ws", headers=g) as ws:  # the same limit on the socket
            ws.send_text(json.dumps({"op": "stroke", **body(sketches[0][3])}))
            msg = ws.receive_json()
            assert msg["status"] == 429 and msg["error"] == "rate_limited" and msg["retry_after"] >= 1


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_sessions_per_client_are_bounded(store, request, tmp_path, tiny_retriever):
    """Two apps: with Redis they are two replicas sharing the count; in memory each counts its own."""
    path = tmp_path / "keys.json"
    alice, bob = bearer(add_key(path, "alice")[1]), bearer(add_key(path, "bob")[1])
    url = "memory" if store == "memory" else request.getfixturevalue("redis_server").url
    config = {"max_sessions_per_client": 2, "session_store": url, "store_timeout": 1.0, "api_keys": path}
    with TestClient(app_with(tiny_retriever, **config)) as a, TestClient(app_with(tiny_retriever, **config)) as b:
        first = a.post("/v1/sessions", headers=alice).json()["id"]
        second = (b if store == "redis" else a).post("/v1/sessions", headers=alice)
        assert second.status_code == 201
        for replica in (a, b) if store == "redis" else (a,):
            r = replica.post("/v1/sessions", headers=alice)
            assert r.status_code == 429 and r.json()["error"] == "too_many_sessions"
            assert int(r.headers["retry-after"]) >= 1 and "DELETE /v1/sessions/ID" in r.json()["hint"]
        assert a.post("/v1/sessions", headers=bob).status_code == 201  # another client has its own count
        assert a.delete(f"/v1/sessions/{first}", headers=alice).status_code == 204
        assert a.post("/v1/sessions", headers=alice).status_code == 201
        if store == "redis":  # a session gone by its TTL (all its keys) frees its place too
            second_key = f"{second.json()['id']}"
            admin = request.getfixturevalue("redis_server").client()
            from dcssa.runtime.serve.sessions import keys_of

            gone = [k for k in admin.scan_iter(match=f"dcssa:{{{second_key}.*")]
            assert gone and admin.delete(*gone) == len(gone)
            assert b.post("/v1/sessions", headers=alice).status_code == 201
            assert all(k.startswith(b"dcssa:") for k in admin.scan_iter(match="*"))
            del keys_of


# -- Origin and CORS ----------------------------------------------------------------------------------


def test_origins_same_allowed_and_refused(tiny_retriever):
    allowed = "http://shop.example:8443"
    with TestClient(app_with(tiny_retriever, cors_origins=(allowed,))) as c:
        assert c.post("/v1/sessions", headers={"Origin": "http://testserver"}).status_code == 201  # same origin
        r = c.post("/v1/sessions", headers={"Origin": allowed})
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == allowed
        pre = c.options("/v1/sessions", headers={"Origin": allowed, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and "authorization" in pre.headers["access-control-allow-headers"].lower()
        for evil in ("http://evil.example", "http://shop.example:8444", "null"):
            r = c.post("/v1/sessions", headers={"Origin": evil})
            assert r.status_code == 403 and r.json()["error"] == "origin_not_allowed" and "--cors-origin" in r.json()["hint"]
            assert "access-control-allow-origin" not in r.headers
        sid = c.post("/v1/sessions").json()["id"]
        with c.websocket_connect(f"/v1/sessions/{sid}/ws", headers={"Origin": "http://evil.example"}) as ws:
            assert ws.receive_json()["status"] == 403
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4403
    with TestClient(app_with(tiny_retriever)) as c:  # the default: same origin only
        r = c.post("/v1/sessions", headers={"Origin": allowed})
        assert r.status_code == 403
    with pytest.raises(Exception, match="not an origin"):
        ServeConfig(cors_origins=("shop.example",))

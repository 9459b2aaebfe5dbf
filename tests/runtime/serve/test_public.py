"""Running it in public, as deployed: Redis with ACL users, 3 replicas, nginx in front, all real, on loopback.

Two topologies from deploy/: nginx.conf with replicas that check API keys (--api-keys), and
nginx-edge-auth.conf where nginx checks HTTP Basic credentials and names the principal to the replicas
(--principal-header). In both: no credentials -> 401 JSON, another principal's session -> 404 on every
replica, over the rate -> 429 with Retry-After. Redis refuses anyone without a password, and a wrong
password never shows up in what the server prints or answers. Anything that cannot start skips, naming why.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("redis")
pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from dcssa.benchmarks.topology import Nginx, Replica, Unavailable  # noqa: E402
from dcssa.runtime.data.synthetic import random_sketch  # noqa: E402
from dcssa.runtime.serve.keys import add_key  # noqa: E402

RATE, BURST = 0.2, 2  # strokes per second per principal per replica: slow enough to be exceeded on purpose


def request(port: int, method: str, path: str, body: object = None, headers: dict | None = None,
            source: str | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request over a real socket (``source``: the client's address)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                      source_address=None if source is None else (source, 0))
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"not_json": raw[:300].decode("utf-8", "replace")}
        return r.status, doc, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def strokes():
    return [x.tolist() for x in random_sketch(np.random.default_rng(3), 12)]


def start(tiny, redis_server, conf: str, extra: list[str], paths: dict | None = None, n: int = 3):
    replicas = [Replica(tiny / "bundle", tiny / "gallery", redis_server.url, tiny / f"logs-{conf}", "--topk", "5",
                        "--rate-limit", f"{RATE}/s", "--rate-burst", str(BURST), *extra) for _ in range(n)]
    try:
        for r in replicas:
            r.start()
        lb = Nginx([r.port for r in replicas], tiny / f"nginx-{conf}", conf, paths).start()
    except BaseException as exc:
        for r in replicas:
            r.stop()
        if isinstance(exc, Unavailable):
            pytest.skip(f"cannot start the topology: {exc}")
        raise
    return replicas, lb


@pytest.fixture(scope="module")
def keyed(tiny, redis_server):
    """Replicas checking API keys behind deploy/nginx.conf."""
    keys = tiny / "api-keys.json"
    issued = {name: add_key(keys, name)[1] for name in ("alice", "bob", "carol")}
    replicas, lb = start(tiny, redis_server, "nginx.conf", ["--api-keys", str(keys)])
    yield replicas, lb, issued
    lb.stop()
    for r in replicas:
        r.stop()


@pytest.fixture(scope="module")
def edge(tiny, redis_server):
    """nginx checking Basic credentials (deploy/nginx-edge-auth.conf), 2 replicas trusting its header."""
    passwords = {"alice": "alice-pw-1", "bob": "bob-pw-2"}
    htpasswd = tiny / "dcssa.htpasswd"
    try:
        lines = [f"{user}:" + subprocess.run(["openssl", "passwd", "-5", "-stdin"], input=pw, text=True,
                                              capture_output=True, check=True).stdout.strip()
                 for user, pw in passwords.items()]
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot hash passwords with openssl: {exc}")
    htpasswd.write_text("\n".join(lines) + "\n")
    replicas, lb = start(tiny, redis_server, "nginx-edge-auth.conf", ["--principal-header", "X-Dcssa-Principal"],
                         {"/etc/nginx/dcssa.htpasswd": htpasswd}, n=2)
    yield replicas, lb, passwords
    lb.stop()
    for r in replicas:
        r.stop()


def test_keys_at_the_replicas_through_nginx(keyed, strokes):
    replicas, lb, keys = keyed
    status, err, headers = request(lb.port, "POST", "/v1/sessions")
    assert status == 401 and err["error"] == "unauthorized" and "api-key add" in err["hint"]
    assert headers["www-authenticate"].startswith("Bearer")
    status, err, _ = request(lb.port, "POST", "/v1/sessions", headers=bearer(keys["alice"][:-3] + "xyz"))
    assert status == 401 and "not valid" in err["message"] and keys["alice"][:20] not in json.dumps(err)
    assert request(lb.port, "GET", "/healthz")[0] == 200
    assert request(lb.port, "GET", "/metrics")[0] == 404  # the operator scrapes replicas, the public cannot
    status, st, _ = request(lb.port, "POST", "/v1/sessions", headers=bearer(keys["alice"]))
    assert status == 201
    sid = st["id"]
    assert request(lb.port, "POST", f"/v1/sessions/{sid}/strokes", {"stroke": strokes[0]}, bearer(keys["alice"]))[0] == 200
    for replica in replicas:  # bob is refused wherever he asks; alice is served wherever she asks
        status, err, _ = request(replica.port, "GET", f"/v1/sessions/{sid}", headers=bearer(keys["bob"]))
        assert status == 404 and err["error"] == "session_not_found"
        status, st, _ = request(replica.port, "GET", f"/v1/sessions/{sid}", headers=bearer(keys["alice"]))
        assert status == 200 and st["stroke"] == 1


def test_the_websocket_key_as_a_subprotocol_through_nginx(keyed, strokes):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    _, lb, keys = keyed
    status, st, _ = request(lb.port, "POST", "/v1/sessions", headers=bearer(keys["alice"]))
    url = f"ws://127.0.0.1:{lb.port}/v1/sessions/{st['id']}/ws"
    with connect(url, subprotocols=["dcssa.v1", "dcssa.key." + keys["alice"]], open_timeout=10) as ws:
        assert ws.subprotocol == "dcssa.v1"  # the fixed name echoed, never the key
        ws.send(json.dumps({"op": "stroke", "stroke": strokes[0]}))
        msg = json.loads(ws.recv(timeout=60))
        assert msg["op"] == "stroke" and msg["stroke"] == 1, msg
    for protocols, status, code in [(["dcssa.v1"], 401, 4401), (["dcssa.v1", "dcssa.key." + keys["bob"]], 404, 4404)]:
        with connect(url, subprotocols=protocols, open_timeout=10) as ws:
            msg = json.loads(ws.recv(timeout=30))
            assert msg["status"] == status and keys["bob"] not in json.dumps(msg)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == code
    with connect(url, subprotocols=["dcssa.v1", "dcssa.key." + keys["alice"]], open_timeout=10,
                 origin="http://evil.example") as ws:  # a page of another site: refused although the key is good
        assert json.loads(ws.recv(timeout=30))["status"] == 403


def test_over_the_rate_is_429_with_retry_after_through_nginx(keyed, strokes):
    replicas, lb, keys = keyed
    status, st, _ = request(lb.port, "POST", "/v1/sessions", headers=bearer(keys["bob"]))
    sid = st["id"]
    codes, waits = [], []
    t0 = time.monotonic()
    for xy in strokes:
        status, doc, headers = request(lb.port, "POST", f"/v1/sessions/{sid}/strokes",
                                       {"stroke": xy, "after": sum(c == 200 for c in codes)}, bearer(keys["bob"]))
        codes.append(status)
        if status == 429:
            assert doc["error"] == "rate_limited" and set(doc) == {"error", "message", "hint"}
            waits.append(int(headers["retry-after"]))
    # each replica admits its burst, then RATE strokes per second: the rest is refused
    refill = len(replicas) * RATE * (time.monotonic() - t0)
    assert 429 in codes and set(codes) <= {200, 429}
    assert codes.count(200) <= len(replicas) * BURST + int(refill) + 1, (codes, refill) and all(1 <= w <= 1 / RATE for w in waits)
    status, st, _ = request(lb.port, "GET", f"/v1/sessions/{sid}", headers=bearer(keys["bob"]))
    assert st["stroke"] == codes.count(200)  # a refused stroke is not applied
    # carol is another principal: her buckets are full
    status, st, _ = request(lb.port, "POST", "/v1/sessions", headers=bearer(keys["carol"]))
    assert request(lb.port, "POST", f"/v1/sessions/{st['id']}/strokes", {"stroke": strokes[0]},
                   bearer(keys["carol"]))[0] == 200


def test_nginx_limits_strokes_per_address_at_the_edge(keyed, strokes):
    _, lb, _ = keyed
    # from 127.0.0.2 (loopback itself is exempt: health checks, benchmarks): 10/s, burst 20, then 429;
    # without a key, so that the replicas answer 401 quickly and never count them themselves
    codes = []
    for _ in range(40):
        status, doc, headers = request(lb.port, "POST", "/v1/sessions/nosuchsession/strokes", {"stroke": strokes[0]},
                                       source="127.0.0.2")
        codes.append(status)
        if status == 429:
            assert doc["error"] == "rate_limited" and "edge" in doc["message"] and headers["retry-after"] == "1"
    assert set(codes) == {401, 429} and codes.index(429) >= 15, codes  # the replicas answered the first ones
    assert request(lb.port, "POST", "/v1/sessions/nosuchsession/strokes", {"stroke": strokes[0]})[0] == 401


def test_authentication_at_the_edge(edge, strokes):
    replicas, lb, pw = edge
    status, err, headers = request(lb.port, "POST", "/v1/sessions")
    assert status == 401 and err["error"] == "unauthorized" and headers["www-authenticate"].startswith("Basic")
    status, err, _ = request(lb.port, "POST", "/v1/sessions", headers=basic("alice", "wrong"))
    assert status == 401 and "wrong" not in json.dumps(err)
    assert request(lb.port, "GET", "/healthz")[0] == 200
    # a client naming a principal itself is ignored: nginx overwrites the header with the signed-in user
    status, st, _ = request(lb.port, "POST", "/v1/sessions", headers={**basic("alice", pw["alice"]),
                                                                      "X-Dcssa-Principal": "bob"})
    assert status == 201
    sid = st["id"]
    assert request(lb.port, "POST", f"/v1/sessions/{sid}/strokes", {"stroke": strokes[0]},
                   basic("alice", pw["alice"]))[0] == 200
    for _ in replicas:  # round robin: every replica refuses bob
        status, err, _ = request(lb.port, "GET", f"/v1/sessions/{sid}", headers=basic("bob", pw["bob"]))
        assert status == 404 and err["error"] == "session_not_found"
    status, st, _ = request(lb.port, "GET", f"/v1/sessions/{sid}", headers=basic("alice", pw["alice"]))
    assert status == 200 and st["stroke"] == 1
    # a replica reached directly (past nginx) without the header refuses
    status, err, _ = request(replicas[0].port, "POST", "/v1/sessions")
    assert status == 401 and "proxy" in err["message"]


def test_redis_needs_a_password_and_a_wrong_one_is_never_printed(tiny, redis_server):
    import redis

    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5).ping()
    app = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.flushall()  # the replicas' user cannot wipe the store
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.set("not-ours", 1)  # nor touch keys outside dcssa:*
    secret = "Wr0ngPassw0rd-do-not-print"
    url = f"redis://dcssa:{secret}@127.0.0.1:{redis_server.port}/0"
    bad = Replica(tiny / "bundle", tiny / "gallery", url, tiny / "logs-badpw", "--topk", "5").start()
    try:
        status, err, _ = request(bad.port, "POST", "/v1/sessions")
        assert status == 503 and err["error"] == "store_unavailable"
        assert secret not in json.dumps(err)
    finally:
        bad.stop()
    logs = "".join(p.read_text() for p in (tiny / "logs-badpw").iterdir())
    assert "does not answer" in logs and "dcssa:***@" in logs  # the warning names the store, redacted
    assert secret not in logs


def test_make_secrets_makes_what_redis_and_the_replicas_accept(tmp_path):
    """deploy/make-secrets.sh on a copy of deploy/: its ACL file admits its passwords, its key file its key."""
    import os
    import shutil
    import stat
    import sys

    import redis

    from dcssa.benchmarks.topology import DEPLOY, free_port, stop, wait_port
    from dcssa.runtime.serve.keys import KeyRing

    if not all(shutil.which(t) for t in ("openssl", "sha256sum", "redis-server")):
        pytest.skip("needs openssl, sha256sum and redis-server")
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns(".env", "users.acl", "api-keys.json"))
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    made = subprocess.run(["sh", str(deploy / "make-secrets.sh"), "kiosk"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert KeyRing(deploy / "api-keys.json").principal(key) == "kiosk"
    assert stat.S_IMODE(os.stat(deploy / ".env").st_mode) == 0o600
    secrets = dict(line.split("=", 1) for line in (deploy / ".env").read_text().split())
    acl = (deploy / "users.acl").read_text()
    assert secrets["DCSSA_REDIS_PASSWORD"] not in acl  # hashes only
    again = subprocess.run(["sh", str(deploy / "make-secrets.sh")], env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "exists already" in again.stderr  # never overwrites secrets in use
    port = free_port()
    proc = subprocess.Popen(["redis-server", str(DEPLOY / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(tmp_path), "--aclfile", str(deploy / "users.acl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "redis-server")
        app = redis.Redis(port=port, username="dcssa", password=secrets["DCSSA_REDIS_PASSWORD"])
        assert app.set("dcssa:probe", 1) and app.get("dcssa:probe") == b"1"
        admin = redis.Redis(port=port, username="admin", password=secrets["REDIS_ADMIN_PASSWORD"])
        assert admin.config_get("maxmemory")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, username="dcssa", password="guess").ping()
    finally:
        stop(proc)

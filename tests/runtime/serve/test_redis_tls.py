"""``rediss://``: the session store over TLS, against a real redis-server with a TLS port and ACL users.

The certificates are made here with openssl (a throw-away CA and a server certificate for 127.0.0.1);
the URL names the CA with ``?ssl_ca_certs=``, and the printed form of the URL hides the password and
the query. Skips (naming why) when openssl or a TLS-capable redis-server is missing.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("redis")

from fastapi.testclient import TestClient  # noqa: E402

from dcssa.benchmarks.topology import DEPLOY, Unavailable, free_port, stop, wait_port, write_acl  # noqa: E402
from dcssa.runtime.serve import ServeConfig, create_app  # noqa: E402
from dcssa.runtime.serve.config import redact  # noqa: E402
from dcssa.runtime.serve.sessions import keys_of  # noqa: E402


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("needs openssl and redis-server")
    d = tmp_path_factory.mktemp("redis-tls")
    try:
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "redis.key",
                "-out", "redis.csr", cwd=d)
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "ext.cnf", "-out", "redis.crt", cwd=d)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"openssl could not make test certificates: {exc.stderr[-200:]!r}")
    passwords = {"dcssa": "tls-app-pw-123", "admin": "tls-admin-pw-456"}
    acl = write_acl(d / "users.acl", passwords)
    port = free_port()
    log = open(d / "redis.log", "wb")
    proc = subprocess.Popen(
        ["redis-server", str(DEPLOY / "redis.conf"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--dir", str(d), "--daemonize", "no", "--aclfile", str(acl), "--tls-cert-file", str(d / "redis.crt"),
         "--tls-key-file", str(d / "redis.key"), "--tls-ca-cert-file", str(d / "ca.crt"), "--tls-auth-clients", "no"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, "redis-server --tls-port")
    except Unavailable as exc:
        stop(proc)
        pytest.skip(f"redis-server here cannot serve TLS: {exc}: {(d / 'redis.log').read_text()[-300:]}")
    yield d, port, passwords
    stop(proc)


def test_sessions_over_rediss(tls_redis, tiny_retriever):
    d, port, pw = tls_redis
    url = f"rediss://dcssa:{pw['dcssa']}@127.0.0.1:{port}/0?ssl_ca_certs={d / 'ca.crt'}"
    assert redact(url) == f"rediss://dcssa:***@127.0.0.1:{port}/0?***"
    config = ServeConfig(session_store=url, store_timeout=2.0, max_batch=2, batch_window_ms=1)
    assert pw["dcssa"] not in repr(config)
    with TestClient(create_app(tiny_retriever, config=config)) as c:
        sid = c.post("/v1/sessions").json()["id"]
        r = c.post(f"/v1/sessions/{sid}/strokes", json={"stroke": [[10, 10], [200, 120], [90, 240]]})
        assert r.status_code == 200 and r.json()["stroke"] == 1
        assert c.get("/healthz").json()["session_store"] == "redis"
    import redis

    admin = redis.Redis.from_url(f"rediss://admin:{pw['admin']}@127.0.0.1:{port}/0", ssl_ca_certs=str(d / "ca.crt"))
    assert admin.exists(keys_of(sid)[0]) == 1  # it went through the TLS port to this server


def test_rediss_with_an_untrusted_certificate_is_a_clean_503(tls_redis, tiny_retriever):
    d, port, pw = tls_redis
    url = f"rediss://dcssa:{pw['dcssa']}@127.0.0.1:{port}/0"  # no CA given: the self-signed chain is refused
    with TestClient(create_app(tiny_retriever, config=ServeConfig(session_store=url, store_timeout=2.0))) as c:
        r = c.post("/v1/sessions")
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
        assert pw["dcssa"] not in r.text

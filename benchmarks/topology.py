"""The scale-out topology on loopback, as real processes: redis-server, N ``dcssa-rt serve``, nginx.

Used by tests/runtime/serve/test_scale_out.py and benchmarks/scale_out.py. Every process is started
from deploy/'s files with only the loopback ports and temporary paths changed, so what is tested is
what deploy/compose.yaml runs. Whatever cannot start raises :class:`Unavailable` with the reason
(the tests skip with it).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# deploy/ of the source tree (an editable install); DCSSA_DEPLOY names another copy
DEPLOY = Path(os.environ.get("DCSSA_DEPLOY", Path(__file__).resolve().parents[1] / "deploy"))


class Unavailable(RuntimeError):
    """A service of the topology could not be started here (the reason is the message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise Unavailable(f"{what} did not listen on port {port} within {timeout:g} s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one process we started (by its pid), escalating to SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def write_acl(path: Path, passwords: dict[str, str]) -> Path:
    """deploy/redis-users.acl.in with the SHA-256 of ``passwords`` (``dcssa``, ``admin``), as make-secrets.sh does."""
    text = (DEPLOY / "redis-users.acl.in").read_text()
    for user, password in passwords.items():
        text = text.replace(f"@{user.upper()}_SHA256@", hashlib.sha256(password.encode()).hexdigest())
    if re.search(r"@[A-Z]+_SHA256@", text):
        raise RuntimeError("deploy/redis-users.acl.in has a placeholder the tests do not fill")
    path.write_text(text)
    path.chmod(0o600)
    return path


class Redis:
    """``redis-server deploy/redis.conf`` on a loopback port, its AOF in ``workdir``, with deploy/'s ACL
    users: ``url`` logs in as ``dcssa`` (what the replicas may do), ``client()`` as ``admin``."""

    def __init__(self, workdir: Path, port: int | None = None, maxmemory: str = "256mb") -> None:
        self.exe = shutil.which("redis-server")
        self.maxmemory = maxmemory
        if self.exe is None:
            raise Unavailable("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.passwords = {"dcssa": secrets.token_hex(16), "admin": secrets.token_hex(16)}
        self.acl = write_acl(self.workdir / "users.acl", self.passwords)

    @property
    def url(self) -> str:
        return f"redis://dcssa:{self.passwords['dcssa']}@127.0.0.1:{self.port}/0"

    @property
    def admin_url(self) -> str:
        return f"redis://admin:{self.passwords['admin']}@127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [self.exe, str(DEPLOY / "redis.conf"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--daemonize", "no", "--maxmemory", self.maxmemory, "--aclfile", str(self.acl)],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc, "redis-server")
        except Unavailable as exc:
            raise Unavailable(f"{exc}: {(self.workdir / 'redis.log').read_text()[-300:]}") from None
        client = self.client()
        end = time.monotonic() + 20
        while True:  # listening is not ready: it answers LOADING while it replays the AOF
            try:
                client.ping()
                break
            except Exception:
                if time.monotonic() > end:
                    raise Unavailable("redis-server did not become ready") from None
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop(self.proc)

    def client(self):
        import redis

        return redis.Redis.from_url(self.admin_url, socket_timeout=5)


class Replica:
    """One ``dcssa-rt serve`` process (port 0: it picks a free one and prints it under --json; a fixed
    ``port`` lets a restarted replica take its predecessor's place behind nginx)."""

    def __init__(self, bundle: Path, gallery: Path, store: str, workdir: Path, *extra: str, threads: int = 1,
                 port: int = 0) -> None:
        self.args = [str(Path(sys.executable).parent / "dcssa-rt"), "serve", "--bundle", str(bundle),
                     "--gallery", str(gallery), "--host", "127.0.0.1", "--port", str(port), "--backend", "ort-cpu",
                     "--threads", str(threads), "--session-store", store, "--json", *extra]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 90.0) -> Replica:
        err = open(self.workdir / f"replica-{time.time_ns()}.log", "wb")
        env = {**os.environ, "OMP_NUM_THREADS": self.args[self.args.index("--threads") + 1]}
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=err, env=env)
        end = time.monotonic() + timeout
        line = b""
        while not line and time.monotonic() < end:  # the --json startup line, then uvicorn listens
            line = self.proc.stdout.readline()
            if self.proc.poll() is not None:
                break
        if not line:
            stop(self.proc)
            raise Unavailable(f"dcssa-rt serve did not start (see {err.name})")
        self.port = int(json.loads(line)["url"].rstrip("/").rsplit(":", 1)[1])
        wait_port(self.port, self.proc, "dcssa-rt serve", timeout)
        return self

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop(self.proc)


def render_nginx(ports: list[int], listen: int, prefix: Path, conf: str = "nginx.conf",
                 paths: dict[str, Path] | None = None) -> Path:
    """deploy/``conf`` with loopback upstreams and port, inside a main config whose paths are in ``prefix``;
    ``paths``: file paths of the snippet replaced by local ones (the edge variant's htpasswd)."""
    snippet = (DEPLOY / conf).read_text()
    for old, new in (paths or {}).items():
        if old not in snippet:
            raise RuntimeError(f"deploy/{conf} no longer names {old}")
        snippet = snippet.replace(old, str(new))
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;\n" for p in ports)
    snippet, n = re.subn(r"(upstream dcssa \{\n[^{}]*?\n)((?:    server [^\n]*\n)+)", lambda m: m.group(1) + servers,
                         snippet, flags=re.S)
    snippet, m = re.subn(r"listen 8080;", f"listen 127.0.0.1:{listen};", snippet)
    if n != 1 or m != 1:
        raise RuntimeError(f"deploy/{conf} no longer has the upstream/listen lines the tests rewrite")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "dcssa.conf").write_text(snippet)
    # as root, nginx's workers would drop to "nobody", which cannot write the temp dirs made here
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = f"""daemon off;
{user}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/dcssa.conf;
}}
"""
    conf = prefix / "nginx.conf"
    conf.write_text(main)
    return conf


class Nginx:
    """nginx in the foreground with a generated config (see :func:`render_nginx`)."""

    def __init__(self, ports: list[int], prefix: Path, conf: str = "nginx.conf",
                 paths: dict[str, Path] | None = None) -> None:
        self.exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if self.exe is None:
            raise Unavailable("nginx is not installed (apt-get install nginx; .ci/run does)")
        self.port = free_port()
        self.prefix = Path(prefix)
        self.conf = render_nginx(ports, self.port, self.prefix, conf, paths)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        out = open(self.prefix / "stderr.log", "wb")
        self.proc = subprocess.Popen([self.exe, "-p", str(self.prefix), "-c", str(self.conf)],
                                     stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc, "nginx", 15)
        except Unavailable as exc:
            raise Unavailable(f"{exc}: {(self.prefix / 'stderr.log').read_text()[-400:]}") from None
        return self

    def stop(self) -> None:
        stop(self.proc)


def call(port: int, method: str, path: str, body: object = None, *, retry: bool = True,
         timeout: float = 30.0, headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int, dict]:
    """One JSON request over a real socket; retried once after a connection error or a 502, as the page does.
    ``source``: the client's loopback address (127.0.0.2 ...: another client as nginx sees it)."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in (0, 1):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                          source_address=None if source is None else (source, 0))
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            raw = r.read()
            status = r.status
        except (ConnectionError, http.client.HTTPException):
            if retry and attempt == 0:
                continue
            raise
        finally:
            conn.close()
        if status == 502 and retry and attempt == 0:
            continue
        try:
            return status, json.loads(raw) if raw else {}
        except ValueError:
            return status, {"error": "not_json", "message": raw[:300].decode("utf-8", "replace")}
    raise AssertionError("unreachable")


#: what the drawing page retries once, after PAGE_RETRY_S (runtime/serve/static/index.html, api())
PAGE_RETRIED = (502, 503)
#: nginx leaves a replica that failed out of rotation this long (deploy/nginx.conf's fail_timeout),
#: even once it is back: a rolling update waits it out before stopping the next replica
FAIL_TIMEOUT_S = 5
PAGE_RETRY_S = 0.5


def page_call(port: int, method: str, path: str, body: object = None, *, timeout: float = 30.0,
              headers: dict | None = None) -> tuple[int, dict, list[int]]:
    """One request retried exactly as the page retries it: once, half a second after a network error,
    a 502 or a 503. Returns the final status and body, and every status seen (0: a network error)."""
    data = None if body is None else json.dumps(body).encode()
    seen: list[int] = []
    for attempt in (0, 1):
        if attempt:
            time.sleep(PAGE_RETRY_S)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            raw, status = r.read(), r.status
        except (ConnectionError, http.client.HTTPException, TimeoutError):
            seen.append(0)
            if attempt == 0:
                continue
            return 0, {"error": "network"}, seen
        finally:
            conn.close()
        seen.append(status)
        if status in PAGE_RETRIED and attempt == 0:
            continue
        try:
            return status, json.loads(raw) if raw else {}, seen
        except ValueError:
            return status, {"error": "not_json", "message": raw[:300].decode("utf-8", "replace")}, seen
    raise AssertionError("unreachable")

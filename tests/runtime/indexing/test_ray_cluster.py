"""`dcssa-rt index --ray auto` submitted with `ray job submit` to a two-node Ray cluster.

The two nodes are two raylets on this machine (`ray start --head`, then `ray start --address`), one
CPU each, so the two photo-encoder actors must run on different nodes and the shards cross node
boundaries as they would on real machines. The gallery must equal the local `index` of the same
photos. Skipped, with the reason, where the Ray CLI or its job server (`ray[default]`) cannot start.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytest.importorskip("aiohttp_cors", reason="`ray job submit` needs ray[default] (the dashboard's job server)")

from click.testing import CliRunner  # noqa: E402
from tiny_bundle import write_tiny_bundle, write_tiny_photos  # noqa: E402

from dcssa.runtime import Bundle, Gallery  # noqa: E402
from dcssa.runtime.cli import main as rt  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Node:
    """One `ray start --block` in its own process group, stopped with the group (never `ray stop`,
    which would stop every Ray instance on the machine, other tests' included)."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)  # it drains for up to 30 s; a test cluster has nothing to drain
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # the raylet's children (workers) may outlive the group leader for a moment
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_until_started(node: _Node, timeout: float = 120) -> None:
    """`ray start --block` logs "Ray runtime started" once its node has joined (no `ray status` polling:
    each call is a Python start-up on a 2-core machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = node.log.read_text(errors="replace") if node.log.exists() else ""
        if "Ray runtime started" in text:
            return
        if node.proc.poll() is not None:
            pytest.skip(f"`ray start` exited ({node.proc.returncode}): {text[-400:]}")
        time.sleep(0.5)
    pytest.skip(f"`ray start` did not start a node in {timeout:.0f} s: {node.log.read_text(errors='replace')[-400:]}")


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths must stay short
    gcs_port, dash_port = _free_port(), _free_port()
    # Token auth with this cluster's own token, passed in the environment of every node and client: a
    # fresh machine has no ~/.ray/auth_token, and `ray start` in token mode refuses to start without one.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--object-store-memory", str(200 * 2**20)]
    nodes = [_Node(["--head", "--temp-dir", str(temp), "--port", str(gcs_port), "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                    "--dashboard-agent-listen-port", str(_free_port()),
                    "--ray-client-server-port", str(_free_port()), *common], env, temp / "head.log")]
    gcs = f"127.0.0.1:{gcs_port}"
    try:
        _wait_until_started(nodes[0])
        nodes.append(_Node(["--address", gcs, "--dashboard-agent-listen-port", str(_free_port()), *common], env,
                           temp / "worker.log"))
        _wait_until_started(nodes[1])
        yield {"env": env, "jobs": f"http://127.0.0.1:{dash_port}"}
    finally:
        for n in reversed(nodes):
            n.stop()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_ray_job_submit_on_two_nodes_equals_the_local_index(cluster, tmp_path):
    tiny = write_tiny_bundle(tmp_path / "tiny")
    photos = write_tiny_photos(tmp_path / "photos", 24)
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert CliRunner().invoke(rt, ["index", str(photos), "--bundle", str(tiny), "--out", str(local), "-q"]).exit_code == 0
    job = subprocess.run([RAY, "job", "submit", "--address", cluster["jobs"], "--",
                          sys.executable, "-m", "dcssa.runtime.cli", "index", str(photos), "--bundle", str(tiny),
                          "--out", str(remote), "--ray", "auto"],
                         env=cluster["env"], capture_output=True, text=True, timeout=900)
    log = job.stdout + job.stderr
    if job.returncode != 0 and "Failed to connect" in log and "job" in log.lower():
        pytest.skip(f"the cluster's job server did not answer: {log[-400:]}")
    assert job.returncode == 0, log[-2000:]
    # the pool is the cluster's CPUs (both nodes joined, one actor each), and the actors run the backend the
    # command was given (`auto`: OpenVINO on an Intel CPU, as the local `index` above; not a fixed ort-cpu)
    assert "on 2 photo-encoder actors (auto)" in log
    b = Bundle.load(tiny)
    a, r = Gallery.load(local, b), Gallery.load(remote, b)
    assert a.ids == r.ids and len(r) == 24
    np.testing.assert_allclose(r.embeddings, a.embeddings, atol=1e-5)
    assert json.loads((remote / "gallery.json").read_text())["count"] == 24
    assert not list(tmp_path.glob(".remote.ray-shards*"))  # merged, then removed

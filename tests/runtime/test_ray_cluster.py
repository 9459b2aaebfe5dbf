"""`dcssa-rt index --ray auto` submitted with `ray job submit` to a two-node Ray cluster.

The two nodes are two raylets on this machine (`ray start --head`, then `ray start --address`), one
CPU each, so the two photo-encoder actors must run on different nodes and the shards cross node
boundaries as they would on real machines. The gallery must equal the local `index` of the same
photos. Skipped, with the reason, where the Ray CLI or its job server (`ray[default]`) cannot start.
"""

from __future__ import annotations

import json
import os
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
                self.proc.wait(timeout=10)  # it drains for up to 30 s; a test cluster has nothing to drain
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:  # the raylet's children (workers) may outlive the group leader for a moment
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for_nodes(env: dict, gcs: str, count: int, nodes: list[_Node], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for n in nodes:
            if n.proc.poll() is not None:
                pytest.skip(f"`ray start` exited ({n.proc.returncode}): {n.log.read_text()[-400:]}")
        res = subprocess.run([RAY, "status", "--address", gcs], env=env, capture_output=True, text=True, timeout=60)
        last = res.stdout + res.stderr
        active = last.split("Active:")[-1].split("Pending:")[0] if "Active:" in last else ""
        if active.count("node_") >= count:
            return
        time.sleep(2)
    pytest.skip(f"the two-node Ray cluster did not come up in {timeout:.0f} s: {last[-400:]}")


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths must stay short
    gcs_port, dash_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token",  # every node and client of this cluster uses the token
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--object-store-memory", str(200 * 2**20)]
    nodes = [_Node(["--head", "--temp-dir", str(temp), "--port", str(gcs_port), "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                    "--dashboard-agent-listen-port", str(_free_port()),
                    "--ray-client-server-port", str(_free_port()), *common], env, temp.with_suffix(".head.log"))]
    gcs = f"127.0.0.1:{gcs_port}"
    try:
        _wait_for_nodes(env, gcs, 1, nodes)
        nodes.append(_Node(["--address", gcs, "--dashboard-agent-listen-port", str(_free_port()), *common], env,
                           temp.with_suffix(".worker.log")))
        _wait_for_nodes(env, gcs, 2, nodes)
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
    assert "on 2 photo-encoder actors" in log  # one per node: each node has one CPU
    b = Bundle.load(tiny)
    a, r = Gallery.load(local, b), Gallery.load(remote, b)
    assert a.ids == r.ids and len(r) == 24
    np.testing.assert_allclose(r.embeddings, a.embeddings, atol=1e-5)
    assert json.loads((remote / "gallery.json").read_text())["count"] == 24
    assert not list(tmp_path.glob(".remote.ray-shards*"))  # merged, then removed

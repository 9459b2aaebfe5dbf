"""`dcssa-bench redis-capacity` at tiny scale on a real redis-server: every number in its report is
checked against what Redis itself holds afterwards (versions counted, bytes stored), not against the
harness's own bookkeeping."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("redis")
pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")


@pytest.fixture(scope="module")
def tiny_retriever(tmp_path_factory):
    from tiny_bundle import write_tiny_bundle, write_tiny_gallery

    from dcssa.runtime import Bundle, Gallery, Retriever

    root = tmp_path_factory.mktemp("cap")
    bundle = write_tiny_bundle(root / "bundle", seed=0)
    write_tiny_gallery(bundle, root / "gallery", photos=8)
    b = Bundle.load(bundle)
    return Retriever(b, Gallery.load(root / "gallery", b), backend="ort-cpu", topk=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from dcssa.benchmarks.topology import Redis, Unavailable

    try:
        srv = Redis(tmp_path_factory.mktemp("redis"), maxmemory="64mb").start()
    except Unavailable as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    yield srv
    srv.stop()


def versions(client, tag: str, replicas: int, concurrency: int) -> int:
    """Commits Redis applied to a probe's sessions: each commit raised its session's version by one."""
    from dcssa.runtime.serve.sessions import keys_of

    return sum(int(client.hget(keys_of(f"{tag}r{i}-{j}".ljust(24, "x"))[0], "version"))
               for i in range(replicas) for j in range(concurrency))


def test_report_agrees_with_what_redis_holds(tiny_retriever, server, tmp_path):
    from dcssa.benchmarks.redis_capacity import ROWS_DRAWN, CapacityOptions, real_rows, run, write
    from dcssa.runtime.serve.sessions import unpack_row

    o = CapacityOptions(sizes="5,30", sessions="400,100", replicas="2", concurrency=2, seconds=1.0,
                        aof_seconds=1.5, aof_replicas=1, max_strokes=4)
    rep = run(tiny_retriever, o, url=server.url, admin_url=server.admin_url)
    client = server.client()
    tiny_rows = real_rows(tiny_retriever)  # the rows it stored: those of a real session, made again
    assert [unpack_row(r)[1].stroke for r in tiny_rows] == list(range(1, ROWS_DRAWN + 1))
    for m, strokes, n in zip(rep["memory"], (5, 30), (400, 100)):
        payload = sum(len(tiny_rows[i % len(tiny_rows)]) for i in range(strokes))
        assert (m["strokes"], m["sessions"], m["payload_bytes_per_session"]) == (strokes, n, payload)
        # Redis holds at least the payload, plus per-key and per-element overhead (small rows here)
        assert payload < m["memory_usage_one_session"] < 3 * payload + 2048
        # used_memory grew by the sessions plus the server's own buffers (query, AOF), a fixed cost
        # that weighs on these tiny sessions; the second half's growth alone is the sessions' keys
        assert payload < m["bytes_per_session"]
        assert 0.9 * m["memory_usage_one_session"] < m["bytes_per_session_marginal"] \
            < 1.25 * m["memory_usage_one_session"] + 512
    # the last fill is still in place: its sessions and their stroke counts
    states = [k for k in client.scan_iter("dcssa:*:state") if not k.startswith((b"dcssa:{sweep", b"dcssa:{aof"))]
    assert len(states) == 100 and {int(client.hget(k, "strokes")) for k in states} == {30}
    for held, m in zip(rep["held"], rep["memory"]):
        limit = rep["redis"]["maxmemory"]
        assert held["extrapolated"] and held["sessions_at_maxmemory"] * m["bytes_per_session"] <= limit
    (sweep,) = rep["sweep"]
    assert sweep["commits"] == versions(client, "sweep2", 2, 2) > 0 and sweep["failed_commits"] == 0
    assert sweep["commits_per_s"] == pytest.approx(sweep["commits"] / o.seconds, abs=0.1)
    assert 0 < sweep["p50_ms"] <= sweep["p99_ms"] <= sweep["max_ms"]
    # Redis's own count: a TOUCH and a COMMIT script per stroke (CONFIG RESETSTAT before the point),
    # plus per replica process at most its warm-up TOUCH and one retried after loading the script
    assert 2 * sweep["commits"] <= sweep["script_calls"] <= 2 * sweep["commits"] + 2 * 2
    assert sweep["server_us_per_stroke"] > 0
    a = rep["aof"]
    assert a["aof_last_bgrewrite_status"] == "ok" and 0 <= a["window_s"][0] <= a["window_s"][1]
    assert a["before"]["commits"] and a["after"]["commits"]  # the load outlasts the rewrite
    assert sum(a[k]["commits"] for k in ("before", "during", "after")) == versions(client, "aof", 1, 2)
    assert len(a["timeline"]["t_s"]) == len(a["timeline"]["ms"]) == versions(client, "aof", 1, 2)
    paths = write(rep, tmp_path / "out")
    assert [p.name for p in paths] == ["redis_capacity.json", "redis_capacity.md", "redis_capacity.png"]
    assert json.loads(paths[0].read_text())["sweep"][0]["commits"] == sweep["commits"]
    assert f"| 30 | 100 | {rep['memory'][1]['bytes_per_session']:,} B |" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left behind


def test_mismatched_sizes_and_counts_are_refused(server):
    from dcssa.benchmarks.redis_capacity import CapacityOptions, measure
    from dcssa.runtime.errors import DcssaError

    with pytest.raises(DcssaError, match="one session count per size"):
        measure(server.url, [b"x"], CapacityOptions(sizes="5,12", sessions="40"), server.admin_url)

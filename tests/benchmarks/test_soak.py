"""``dcssa-bench soak`` in small: 36 s of steady, abusive and malformed clients over nginx + 3 replicas + Redis.

This checks for leaks, not speed (no latency is asserted). Within 36 s only a gross leak can show, so
the bounds are generous and each says what it would catch:

- replica RSS: last sample <= 1.3 x the baseline after warm-up. The smoke run here measured 117 ->
  122 MiB (ratio 1.03) while CPython's arenas and onnxruntime's allocator fill in steps of a few MiB;
  a leak of a few KiB per request (about 500 requests per replica here) would exceed it.
- replica file descriptors: never more than the baseline + 40. nginx keeps up to 32 idle upstream
  connections and the Redis client pool grows with concurrency, so the count moves by tens; a
  descriptor leaked per request (hundreds of requests) would not fit.
- Redis keys: last <= 2 x baseline + 40 with a session TTL of 6 s: abandoned and flooded sessions
  expire, so the count plateaus once the TTL has passed (before the baseline); without expiry it
  would grow with every session opened (about 2 per second here).
- Redis used memory: last <= 1.5 x baseline, for the same reason.
- no steady stroke lost after the page's one retry, and no 5xx to anyone.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("redis")
pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")

from dcssa.benchmarks.soak import SoakOptions, markdown, run_soak  # noqa: E402
from dcssa.benchmarks.topology import Unavailable  # noqa: E402
from dcssa.runtime.errors import DcssaError  # noqa: E402
from dcssa.runtime.progress import SILENT  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_bundle import write_tiny_bundle, write_tiny_gallery

    root = tmp_path_factory.mktemp("soak")
    bundle = write_tiny_bundle(root / "bundle", seed=0)
    write_tiny_gallery(bundle, root / "gallery", photos=8)
    return root


def test_a_short_soak_stays_flat(tiny, tmp_path):
    opts = SoakOptions(minutes=0.6, interval=4, warmup=2, rate=4, drawers=4, strokes=6, abusive_rate=4,
                       malformed_rate=2, replicas=3, session_ttl=6, out=tmp_path)
    try:
        rep = run_soak(tiny / "bundle", tiny / "gallery", opts, tmp_path / "work", SILENT)
    except (Unavailable, DcssaError) as exc:
        if "cannot start" in str(exc) or isinstance(exc, Unavailable):
            pytest.skip(f"cannot start the topology: {exc}")
        raise
    s, samples = rep["summary"], rep["samples"]
    assert len(samples) == 9 and samples[-1]["minute"] >= 0.55
    assert sum(x["strokes"] for x in samples) >= 60  # the load really ran
    assert rep["steady_lost"] == 0
    for who, by in rep["statuses"].items():
        assert not [c for c in by if c.startswith("5")], (who, by)
    assert set(rep["statuses"]["malformed"]) <= {"404", "409", "422"}
    assert s["replica_rss_mib"]["last"] <= 1.3 * s["replica_rss_mib"]["baseline"]
    assert s["replica_fds"]["max"] <= s["replica_fds"]["baseline"] + 40
    assert s["redis_keys"]["last"] <= 2 * s["redis_keys"]["baseline"] + 40
    assert s["redis_used_mib"]["last"] <= 1.5 * s["redis_used_mib"]["baseline"]
    rep.update(options={"replicas": 3, "drawers": 4, "rate": 4, "abusive_rate": 4, "malformed_rate": 2,
                        "session_ttl": 6, "interval": 4},
               machine={"cpu": "x", "isa": "y", "cores": 2, "loadavg_start": (0, 0, 0), "loadavg_end": (0, 0, 0)},
               bundle="tiny", gallery=8, minutes_run=samples[-1]["minute"])
    text = markdown(rep)
    assert "| replica_rss_mib |" in text and "lost (failed after the page's one retry): 0" in text

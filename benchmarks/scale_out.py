"""``dcssa-bench scale-out``: load test of the scale-out topology against one in-memory replica, on
loopback, side by side.

1. redis-server (deploy/redis.conf) + N ``dcssa-rt serve --session-store redis://...`` replicas +
   nginx (deploy/nginx.conf) round-robin: K clients draw M strokes each through the balancer;
2. one ``dcssa-rt serve`` with the in-memory store, the same K x M load sent to it directly.

For both: per-stroke latency p50/p95 (client-measured), strokes/s, errors, and every client's final
top-K checked against an offline session on the same strokes. For the Redis topology also: the
time each operation spends on the store (the replicas' ``dcssa_store_seconds``), sessions rebuilt
from Redis and their cost, refused commits; then bytes per session in Redis (MEMORY USAGE) and the
rebuild time of a session at 20 and 256 strokes. Writes scale_out.json and scale_out.md to --out.

    .venv/bin/dcssa-bench scale-out --bundle demo-out/bundle --clients 6 --strokes 8 --out bench-out

Bounded: K x M strokes per topology, each request with a timeout, the whole load within --time-limit.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.clients import FRAME, metric, offline, run_clients, same_topk, to_client
from dcssa.benchmarks.env import cpu_model, isa
from dcssa.benchmarks.topology import Nginx, Redis, Replica, Unavailable
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.errors import DcssaError


class _Bar:
    def update(self, _n: int) -> None:
        pass


def _metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def _summary(name: str, got: dict, want: list, gallery) -> dict:
    lat = np.array(got["latencies_ms"]) if got["latencies_ms"] else np.array([np.nan])
    mismatched = [i for i, (f, w) in enumerate(zip(got["finals"], want)) if not same_topk(f, w, gallery)]
    return {
        "setting": name, "strokes_ok": len(got["latencies_ms"]), "errors": got["errors"],
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "mean_ms": round(float(lat.mean()), 1), "wall_s": round(got["wall_s"], 2),
        "strokes_per_s": round(len(got["latencies_ms"]) / got["wall_s"], 2),
        "final_topk_equal_offline": not mismatched, "mismatched_clients": mismatched,
    }


def _store_stats(texts: list[str]) -> dict:
    """Per-replica store histograms summed: mean time per operation on Redis, rebuilds, conflicts."""
    total = {k: sum(metric(t, k) for t in texts) for k in (
        "dcssa_store_seconds_sum", "dcssa_store_seconds_count", "dcssa_session_rebuild_seconds_sum",
        "dcssa_session_rebuild_seconds_count", "dcssa_store_conflicts_total", "dcssa_strokes_total")}
    ops = total["dcssa_store_seconds_count"]
    rebuilds = total["dcssa_session_rebuild_seconds_count"]
    return {
        "operations": int(ops), "strokes_per_replica": [int(metric(t, "dcssa_strokes_total")) for t in texts],
        "store_ms_per_operation": round(1e3 * total["dcssa_store_seconds_sum"] / ops, 2) if ops else None,
        "rebuilds": int(rebuilds),
        "rebuild_ms_mean": round(1e3 * total["dcssa_session_rebuild_seconds_sum"] / rebuilds, 2) if rebuilds else None,
        "conflicts": int(total["dcssa_store_conflicts_total"]),
    }


def _session_costs(retriever: Retriever, url: str, lb_port: int, sizes: tuple[int, ...], repeats: int) -> list[dict]:
    """MEMORY USAGE of a session of each size, and the time a replica takes to restore it from Redis."""
    import redis

    from dcssa.benchmarks.topology import call
    from dcssa.runtime.serve.config import ServeConfig
    from dcssa.runtime.serve.sessions import RedisStore, keys_of

    client = redis.Redis.from_url(url)
    rng = np.random.default_rng(99)
    rows = []
    for n in sizes:
        strokes = [random_sketch(rng, 1)[0] for _ in range(n)]
        status, st = call(lb_port, "POST", "/v1/sessions", {"strokes": [s.tolist() for s in strokes]}, timeout=1800)
        if status != 201:
            raise DcssaError(f"could not open a {n}-stroke session: {status} {st}")
        sid = st["id"]
        per_key = {k.split(":")[-1]: int(client.memory_usage(k, samples=0) or 0) for k in keys_of(sid)}

        async def restore_times() -> list[float]:
            store = RedisStore(retriever, ServeConfig(session_store=url), url)
            times = []
            try:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    await store._load(sid)
                    times.append((time.perf_counter() - t0) * 1e3)
            finally:
                await store.close()
            return times

        times = asyncio.run(restore_times())
        session = retriever.session()
        t0 = time.perf_counter()
        for s in strokes:  # the canvas part alone: what no store can ship compactly
            session.canvas.add_stroke(np.asarray(s, np.float64))
        canvas_ms = (time.perf_counter() - t0) * 1e3
        rows.append({"strokes": n, "bytes_in_redis": sum(per_key.values()), "bytes_per_key": per_key,
                     "rebuild_ms_median": round(statistics.median(times), 2), "rebuild_ms_runs": [round(t, 2) for t in times],
                     "canvas_redraw_ms": round(canvas_ms, 2)})
    return rows


def _store_round_trips(retriever: Retriever, url: str, strokes: int = 200) -> dict:
    """The store's per-stroke work alone, no model and no HTTP: version read + versioned commit of one
    stroke's rows (points, K/V, result) as a replica does it, ``strokes`` times into one session."""
    from dcssa.runtime.serve.config import ServeConfig
    from dcssa.runtime.serve.sessions import STORE_FORMAT, RedisStore, keys_of

    session = retriever.session()
    xy = random_sketch(np.random.default_rng(5), 1)[0]
    session.add_stroke(xy)

    async def rows() -> list[bytes]:
        store = RedisStore(retriever, ServeConfig(session_store=url), url)
        try:
            return store._rows(session, 0)
        finally:
            await store.close()

    row = asyncio.run(rows())

    async def run() -> list[float]:
        store = RedisStore(retriever, ServeConfig(session_store=url), url)
        try:
            sid = await store.create()
            keys, times = keys_of(sid), []
            for i in range(strokes):
                t0 = time.perf_counter()
                v = await store._version(sid)
                new = await store._commit(keys=keys, args=[v, i, store.ttl_ms, STORE_FORMAT, *row])
                times.append((time.perf_counter() - t0) * 1e3)
                assert new == v + 1
            await store.delete(sid)
            return times
        finally:
            await store.close()

    times = np.array(asyncio.run(run()))
    return {"strokes": strokes, "bytes_per_stroke_sent": sum(map(len, row)),
            "p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
            "mean_ms": round(float(times.mean()), 3)}


def _markdown(rep: dict) -> str:
    e = rep["machine"]
    lines = [f"# Scale-out load test ({rep['clients']} clients x {rep['strokes']} strokes, loopback)", "",
             f"Machine: {e['cpu']} ({e['isa']}), {e['cores']} cores; load average at start {e['loadavg_start']}, "
             f"at end {e['loadavg_end']}. Bundle: {rep['bundle']} ({rep['gallery']} photos).", "",
             "| setting | strokes ok | errors | p50 ms | p95 ms | strokes/s | final top-K = offline |",
             "|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['setting']} | {r['strokes_ok']} | {sum(r['errors'].values())} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['strokes_per_s']} | {'yes' if r['final_topk_equal_offline'] else 'NO'} |")
    s = rep["store"]
    q = rep["ratio"]
    lines += ["", f"Cost of the shared store, same single process: {rep['clients']} clients p50 x{q['p50']}, "
                  f"throughput x{q['strokes_per_s']}; one client drawing alone p50 x{q['sequential_p50']} "
                  f"({q['sequential_p50_delta_ms']:+} ms). The {rep['replicas']}-replica topology / one 1-thread "
                  f"in-memory replica: p50 x{q['topology_p50']}, throughput x{q['topology_strokes_per_s']}; / one "
                  f"replica using all {e['cores']} cores: throughput x{q['topology_vs_all_cores_strokes_per_s']} "
                  f"(the replicas share the same {e['cores']} cores).", "",
              f"Time on the store per operation, one replica: {rep['store_single_replica']['store_ms_per_operation']} ms "
              f"under {rep['clients']} clients, {rep['store_sequential']['store_ms_per_operation']} ms for one client "
              f"drawing alone. The store's work alone (version read + versioned commit of one stroke, "
              f"{rep['store_round_trips']['bytes_per_stroke_sent']:,} bytes, no model, no HTTP, "
              f"{rep['store_round_trips']['strokes']} strokes): p50 {rep['store_round_trips']['p50_ms']} ms, "
              f"p95 {rep['store_round_trips']['p95_ms']} ms.", "",
              f"Store time per operation (touch + load if needed + versioned commit, from the replicas' "
              f"dcssa_store_seconds): {s['store_ms_per_operation']} ms over {s['operations']} operations; "
              f"strokes per replica {s['strokes_per_replica']}; sessions rebuilt from Redis: {s['rebuilds']} "
              f"(mean {s['rebuild_ms_mean']} ms); refused commits: {s['conflicts']}.", "",
              "| strokes in the session | bytes in Redis (MEMORY USAGE) | rebuild from Redis, median ms | of which canvas redraw ms |",
              "|---|---|---|---|"]
    for c in rep["sessions"]:
        lines.append(f"| {c['strokes']} | {c['bytes_in_redis']:,} | {c['rebuild_ms_median']} | {c['canvas_redraw_ms']} |")
    return "\n".join(lines) + "\n"


@click.command("scale-out")
@bundle_option()
@gallery_option
@click.option("--clients", type=click.IntRange(1, 64), default=6, show_default=True)
@click.option("--strokes", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--replicas", type=click.IntRange(1, 8), default=3, show_default=True)
@click.option("--session-sizes", default="20,256", show_default=True, help="Strokes per session for MEMORY USAGE.")
@click.option("--time-limit", type=click.FloatRange(1), default=900, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("bench-out"), show_default=True)
def command(bundle: Path, gallery: Path, clients: int, strokes: int, replicas: int, session_sizes: str,
         time_limit: float, out: Path) -> None:
    """K clients x M strokes through nginx over N Redis-backed replicas, then on one in-memory replica."""
    with fail_cleanly():
        b = Bundle.load(bundle)
        retriever = Retriever(b, Gallery.load(gallery, b), backend="ort-cpu", topk=10)
        rng = np.random.default_rng(7)
        sketches = [[to_client(s) for s in random_sketch(rng, strokes)] for _ in range(clients)]
        want = offline(retriever, sketches, _Bar())
        sizes = tuple(int(x) for x in session_sizes.split(",") if x)
        env = {"cpu": cpu_model(), "isa": isa(), "cores": os.cpu_count(), "loadavg_start": os.getloadavg()}
        runs, store, store_single, store_seq, sessions, round_trips = [], {}, {}, {}, [], {}
        with tempfile.TemporaryDirectory(prefix="dcssa-scale-") as tmp:
            work = Path(tmp)
            flags = ["--topk", "10", "--max-body-kb", "4096"]
            seq = [[to_client(s) for s in random_sketch(np.random.default_rng(8), 16)]]
            want_seq = offline(retriever, seq, _Bar())

            def load(port: int, name: str, sk=sketches, w=want) -> None:
                got = asyncio.run(run_clients(f"http://127.0.0.1:{port}/", sk, 300, time_limit, lambda _n: None))
                runs.append(_summary(name, got, w, retriever.gallery))

            try:
                rs = Redis(work / "redis").start()
            except Unavailable as exc:
                raise DcssaError(f"cannot start redis-server: {exc}", hint="apt-get install redis-server") from None
            procs: list = [rs]
            try:
                reps = [Replica(bundle, gallery, rs.url, work / "logs", *flags).start() for _ in range(replicas)]
                procs += reps
                lb = Nginx([r.port for r in reps], work / "nginx")
                # the sessions of the size probe are bigger than the default 1 MB nginx limit allows
                (lb.prefix / "dcssa.conf").write_text(
                    (lb.prefix / "dcssa.conf").read_text().replace("client_max_body_size 1m;", "client_max_body_size 4m;"))
                lb.start()
                procs.append(lb)
                load(lb.port, f"nginx + {replicas} replicas (1 thread each), Redis store")
                store = _store_stats([_metrics(r.port) for r in reps])
                sessions = _session_costs(retriever, rs.url, lb.port, sizes, repeats=5)
                round_trips = _store_round_trips(retriever, rs.url)
                for p in reversed(procs[1:]):
                    p.stop()
                del procs[1:]
                # the same single process as the in-memory run below, on Redis: the store's own cost
                single = Replica(bundle, gallery, rs.url, work / "logs", *flags).start()
                procs.append(single)
                load(single.port, "1 replica (1 thread), Redis store")
                store_single = _store_stats([_metrics(single.port)])
                load(single.port, "1 client x 16 strokes, 1 replica, Redis store", seq, want_seq)
                store_seq = _store_stats([_metrics(single.port)])
                store_seq["store_ms_per_operation"] = round(
                    (store_seq["store_ms_per_operation"] * store_seq["operations"]
                     - store_single["store_ms_per_operation"] * store_single["operations"])
                    / (store_seq["operations"] - store_single["operations"]), 2)
            finally:
                for p in reversed(procs):
                    p.stop()
            one = Replica(bundle, gallery, "memory", work / "logs", *flags).start()
            try:
                load(one.port, "1 replica (1 thread), in-memory store")
                load(one.port, "1 client x 16 strokes, 1 replica, in-memory store", seq, want_seq)
            finally:
                one.stop()
            both = Replica(bundle, gallery, "memory", work / "logs", *flags, threads=os.cpu_count() or 1).start()
            try:
                load(both.port, f"1 replica ({os.cpu_count()} threads), in-memory store")
            finally:
                both.stop()
        env["loadavg_end"] = os.getloadavg()
        topo, red, mem, red1, mem1, full = (runs[i] for i in (0, 1, 3, 2, 4, 5))
        ratio = {"p50": round(red["p50_ms"] / mem["p50_ms"], 2),
                 "strokes_per_s": round(red["strokes_per_s"] / mem["strokes_per_s"], 2),
                 "sequential_p50": round(red1["p50_ms"] / mem1["p50_ms"], 2),
                 "sequential_p50_delta_ms": round(red1["p50_ms"] - mem1["p50_ms"], 1),
                 "topology_p50": round(topo["p50_ms"] / mem["p50_ms"], 2),
                 "topology_strokes_per_s": round(topo["strokes_per_s"] / mem["strokes_per_s"], 2),
                 "topology_vs_all_cores_strokes_per_s": round(topo["strokes_per_s"] / full["strokes_per_s"], 2)}
        rep = {"clients": clients, "strokes": strokes, "replicas": replicas, "bundle": str(bundle),
               "gallery": len(retriever.gallery), "frame": FRAME, "machine": env, "runs": runs, "ratio": ratio,
               "store": store, "store_single_replica": store_single, "store_sequential": store_seq,
               "store_round_trips": round_trips,
               "sessions": sessions}
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale_out.json").write_text(json.dumps(rep, indent=2) + "\n")
        (out / "scale_out.md").write_text(_markdown(rep))
        click.echo(_markdown(rep))
        if any(not r["final_topk_equal_offline"] or r["errors"] for r in runs):
            raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.scale_out` is deprecated: use `dcssa-bench scale-out` (the same options)")
    command(prog_name="dcssa-bench scale-out")

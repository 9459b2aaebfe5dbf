"""``dcssa-bench redis-capacity``: what one Redis holds and how fast it commits strokes, for sessions
of the size a bundle really writes.

The rows are format-2 rows (``serve.sessions.pack_row``) of a real session of the bundle (its points,
results and float16 K/V rows), cycled to make longer sessions. On one ``redis-server
deploy/redis.conf`` (AOF on, everysec) started on a loopback port:

1. memory: N sessions of S strokes filled through the commit script; ``INFO used_memory`` before
   and after gives bytes per session (and per thousand), beside ``MEMORY USAGE`` of one session and
   the stored payload. Sessions held at ``maxmemory`` are extrapolated from it (marked so);
2. commits under concurrent replicas: P processes, each a replica's store path (version read +
   versioned commit of one stroke, the same Lua scripts, ``redis.asyncio``) over C sessions at once,
   for a fixed time: commits/s and per-commit latency p50/p99;
3. AOF rewrite: the same load while BGREWRITEAOF runs on the filled dataset (fork + rewrite):
   commit latency before, during and after the rewrite.

Writes redis_capacity.json, redis_capacity.md and redis_capacity.png to --out.

    .venv/bin/dcssa-bench redis-capacity --bundle demo-out/bundle --gallery demo-out/bundle/gallery --out bench-out
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.env import cpu_model, isa
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.options import click_options, from_cli, setting
from dcssa.runtime.serve.sessions import COMMIT_SCRIPT, STORE_FORMAT, TOUCH_SCRIPT, keys_of, pack_row

TTL_MS = 3_600_000  # an hour: nothing expires during a run
ROWS_DRAWN = 20  # strokes of the real session whose rows are cycled
LOADED = 1.5  # load average over which timings are "under load"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: not comma-separated integers") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give positive integers, e.g. 20,100")
    return values


@dataclass(frozen=True)
class CapacityOptions:
    """One run of the Redis capacity benchmark."""

    sizes: str = setting("20,100", "Strokes per session for the memory probe (comma-separated).")
    sessions: str = setting("4000,1200", "Sessions filled per size, in --sizes order: keep their bytes "
                                         "under --max-memory (the larger sizes' counts are extrapolated from).")
    replicas: str = setting("1,2,4,8", "Concurrent replicas (processes) of the commit sweep.")
    concurrency: int = setting(4, "Sessions each replica commits to at once (its event loop's streams).",
                               type=click.IntRange(1, 64))
    seconds: float = setting(8.0, "Seconds of load per sweep point.", type=click.FloatRange(0.5))
    aof_seconds: float = setting(24.0, "Seconds of load around BGREWRITEAOF, which starts a third into it; "
                                       "the load goes on until a third after it ends (0: skip the AOF probe).",
                                 type=click.FloatRange(0))
    aof_replicas: int = setting(2, "Replicas committing during the AOF rewrite.", type=click.IntRange(1, 64))
    max_memory: str = setting("3gb", "maxmemory of the benchmark's redis-server.")
    max_strokes: int = setting(20, "Strokes a sweep session reaches before it starts over (a new drawing).",
                               type=click.IntRange(1))
    out: Path = setting(Path("bench-out"), "Folder for redis_capacity.json/.md/.png.",
                        type=click.Path(path_type=Path, file_okay=False))


# -- rows of a real session ----------------------------------------------------------------------------


def real_rows(retriever, strokes: int = ROWS_DRAWN, seed: int = 5) -> list[bytes]:
    """Format-2 rows of a real session of ``retriever``'s bundle (encoder, head, search: real sizes)."""
    from dcssa.runtime.data.synthetic import random_sketch

    session = retriever.session()
    for xy in random_sketch(np.random.default_rng(seed), strokes):
        session.add_stroke(xy)
    keys, values = session.kv_rows()
    stateful = session.head.stateful
    return [pack_row(xy, res, np.stack([keys[i], values[i]]) if stateful else None)
            for i, (xy, res) in enumerate(zip(session.strokes, session.results()))]


def session_rows(rows: list[bytes], strokes: int) -> list[bytes]:
    return [rows[i % len(rows)] for i in range(strokes)]


# -- memory ---------------------------------------------------------------------------------------------


def _fill(client, n: int, rows: list[bytes], batch: int = 16) -> list[str]:
    """``n`` sessions of ``rows`` written as a replica writes them (state hash, then the commit script)."""
    commit = client.register_script(COMMIT_SCRIPT)
    sids, pipe = [], client.pipeline(transaction=False)
    for i in range(n):
        sid = secrets.token_urlsafe(18)
        state, _ = keys = keys_of(sid)
        pipe.hset(state, mapping={"version": 0, "strokes": 0, "format": STORE_FORMAT})
        commit(keys=keys, args=[0, 0, TTL_MS, STORE_FORMAT, *rows], client=pipe)
        sids.append(sid)
        if (i + 1) % batch == 0 or i + 1 == n:
            pipe.execute()
    return sids


def _used(client) -> int:
    return int(client.info("memory")["used_memory"])


def memory_probe(client, rows: list[bytes], sizes: tuple[int, ...], counts: tuple[int, ...],
                 keep_last: bool = True) -> list[dict]:
    """Bytes per session from ``used_memory`` before and after filling, per session size."""
    out = []
    for k, (strokes, n) in enumerate(zip(sizes, counts)):
        client.flushall()
        base = _used(client)
        data = session_rows(rows, strokes)
        t0 = time.perf_counter()
        sids = _fill(client, n // 2, data)
        half = _used(client)
        sids += _fill(client, n - n // 2, data)
        fill_s = time.perf_counter() - t0
        used = _used(client)
        per = (used - base) / n
        # the second half's growth alone: the server's fixed costs (client and AOF buffers, scripts) cancel
        marginal = (used - half) / (n - n // 2)
        sample = sum(int(client.memory_usage(key, samples=0)) for key in keys_of(sids[0]))
        out.append({"strokes": strokes, "sessions": n, "used_memory_before": base, "used_memory_after": used,
                    "bytes_per_session": round(per), "bytes_per_session_marginal": round(marginal),
                    "mib_per_thousand": round(per * 1000 / 2**20, 1),
                    "memory_usage_one_session": sample, "payload_bytes_per_session": sum(map(len, data)),
                    "fill_seconds": round(fill_s, 2), "fill_sessions_per_s": round(n / fill_s, 1)})
    if not keep_last:
        client.flushall()
    return out


# -- commits under concurrent replicas -------------------------------------------------------------------


async def _replica_load(url: str, rows: list[bytes], tag: str, concurrency: int,
                        max_strokes: int, ready, go, end) -> tuple[list[float], list[float], int]:
    """One replica's store path, ``concurrency`` sessions at once: per stroke the version read
    (TOUCH) then the versioned commit of one row, as ``RedisStore`` does. Says ``ready`` once
    connected, runs from the time the parent puts in ``go`` until the one in ``end`` (which the
    parent may push back); returns (start times, latencies, failed commits)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_timeout=60)
    touch, commit = client.register_script(TOUCH_SCRIPT), client.register_script(COMMIT_SCRIPT)
    starts: list[float] = []
    latencies: list[float] = []
    failed = 0
    streams = [keys_of(f"{tag}-{j}".ljust(24, "x")) for j in range(concurrency)]
    for keys in streams:
        await client.hset(keys[0], mapping={"version": 0, "strokes": 0, "format": STORE_FORMAT})
    await touch(keys=streams[0], args=[TTL_MS])  # scripts loaded, connection warm
    ready.put(tag)
    while go.value == 0:
        await asyncio.sleep(0.001)
    start_at = go.value

    async def stream(keys: list[str]) -> None:
        nonlocal failed
        strokes = 0
        while time.time() < start_at:
            await asyncio.sleep(0.001)
        while time.time() < end.value:
            keep = strokes if strokes < max_strokes else 0
            t0 = time.perf_counter()
            version = await touch(keys=keys, args=[TTL_MS])
            new = await commit(keys=keys, args=[version, keep, TTL_MS, STORE_FORMAT, rows[keep % len(rows)]])
            latencies.append((time.perf_counter() - t0) * 1e3)
            starts.append(time.time() - start_at)
            failed += int(new != int(version) + 1)
            strokes = keep + 1

    try:
        await asyncio.gather(*(stream(keys) for keys in streams))
    finally:
        await client.aclose()
    return starts, latencies, failed


def _replica_process(args: tuple, ready, go, end, results) -> None:
    results.put(asyncio.run(_replica_load(*args, ready, go, end)))


def commit_load(url: str, rows: list[bytes], replicas: int, concurrency: int, seconds: float, max_strokes: int,
                tag: str, during=None) -> dict:
    """``replicas`` processes committing for ``seconds`` from one common start (all connected first);
    ``during(start_at, end)`` runs in this process meanwhile (the AOF probe; it may push ``end.value``
    back). Merged start times and latencies."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go, end = ctx.Queue(), ctx.Queue(), ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_replica_process, daemon=True,
                         args=((url, rows, f"{tag}r{i}", concurrency, max_strokes), ready, go, end, results))
             for i in range(replicas)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=300)
        load0 = os.getloadavg()
        start_at = time.time() + 0.2
        end.value = start_at + seconds
        go.value = start_at
        extra = during(start_at, end) if during is not None else None
        got = [results.get(timeout=max(0.0, end.value - time.time()) + 300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    starts = np.concatenate([np.asarray(s, float) for s, _, _ in got])
    lat = np.concatenate([np.asarray(t, float) for _, t, _ in got])
    return {"starts": starts, "latencies": lat, "failed": sum(f for _, _, f in got), "extra": extra,
            "loadavg": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def _stats(lat: np.ndarray) -> dict:
    if not len(lat):
        return {"commits": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"commits": int(len(lat)), "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "max_ms": round(float(lat.max()), 3)}


def _server_time(client) -> dict:
    """Redis's own time in the scripts since the last CONFIG RESETSTAT (INFO commandstats): the
    server's cost of a stroke, apart from the clients' and the network's."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    calls, usec = int(stats.get("calls", 0)), float(stats.get("usec", 0))
    return {"script_calls": calls, "server_us_per_call": round(usec / calls, 1) if calls else None,
            "server_us_per_stroke": round(2 * usec / calls, 1) if calls else None}


def sweep(client, url: str, rows: list[bytes], o: CapacityOptions) -> list[dict]:
    out = []
    for p in _ints(o.replicas):
        client.config_resetstat()
        got = commit_load(url, rows, p, o.concurrency, o.seconds, o.max_strokes, f"sweep{p}")
        out.append({"replicas": p, "concurrency_per_replica": o.concurrency, "seconds": o.seconds,
                    **_stats(got["latencies"]), "commits_per_s": round(len(got["latencies"]) / o.seconds, 1),
                    **_server_time(client), "failed_commits": got["failed"], "loadavg": got["loadavg"],
                    "loadavg_end": got["loadavg_end"]})
    return out


# -- AOF rewrite -----------------------------------------------------------------------------------------


def settle(client, timeout: float = 600.0) -> float:
    """Wait for a rewrite Redis started by itself (auto-aof-rewrite after a fill) to end; seconds waited."""
    t0 = time.time()
    while True:
        info = client.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(info.get("aof_rewrite_scheduled", 0)):
            return round(time.time() - t0, 2)
        if time.time() - t0 > timeout:
            raise DcssaError(f"redis-server still rewriting its AOF after {timeout:.0f} s",
                             hint="retry on a quieter machine")
        time.sleep(0.1)


def _rewrite(client, start_at: float, end, delay: float) -> dict:
    """BGREWRITEAOF ``delay`` s into the load, which goes on ``delay`` s after the rewrite ends; the
    rewrite's window (s from the load's start)."""
    while time.time() < start_at + delay:
        time.sleep(0.01)
    begin = time.time() - start_at
    end.value = float("inf")  # the load goes on for as long as the rewrite runs
    client.bgrewriteaof()
    while True:
        info = client.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(info.get("aof_rewrite_scheduled", 0)):
            break
        time.sleep(0.02)
    done = time.time()
    end.value = done + delay
    finish = done - start_at
    return {"window_s": [round(begin, 3), round(finish, 3)], "rewrite_s": round(finish - begin, 3),
            "latest_fork_usec": int(client.info("stats")["latest_fork_usec"]),
            "aof_last_rewrite_time_sec": int(info.get("aof_last_rewrite_time_sec", -1)),
            "aof_last_bgrewrite_status": info.get("aof_last_bgrewrite_status"),
            "used_memory": _used(client)}


def aof_probe(client, url: str, rows: list[bytes], o: CapacityOptions) -> dict:
    delay = o.aof_seconds / 3
    got = commit_load(url, rows, o.aof_replicas, o.concurrency, o.aof_seconds, o.max_strokes, "aof",
                      during=lambda start_at, end: _rewrite(client, start_at, end, delay))
    rw, s, lat = got["extra"], got["starts"], got["latencies"]
    lo, hi = rw["window_s"]
    return {"replicas": o.aof_replicas, "seconds": round(float(s.max()) if len(s) else 0.0, 1), **rw,
            "failed_commits": got["failed"],
            "before": _stats(lat[s < lo]), "during": _stats(lat[(s >= lo) & (s <= hi)]),
            "after": _stats(lat[s > hi]), "loadavg": got["loadavg"], "loadavg_end": got["loadavg_end"],
            "timeline": {"t_s": [round(float(x), 4) for x in s], "ms": [round(float(x), 3) for x in lat]}}


# -- the run -------------------------------------------------------------------------------------------


def _redis_info(client) -> dict:
    server = client.info("server")
    return {"version": server["redis_version"], "allocator": client.info("memory").get("mem_allocator"),
            "maxmemory": int(client.config_get("maxmemory")["maxmemory"]),
            "appendonly": client.config_get("appendonly")["appendonly"],
            "appendfsync": client.config_get("appendfsync")["appendfsync"]}


def held_at_maxmemory(memory: list[dict], maxmemory: int) -> list[dict]:
    """Sessions one Redis holds at its ``maxmemory`` (EXTRAPOLATED from the measured bytes per session)."""
    return [{"strokes": m["strokes"], "sessions_at_maxmemory": int((maxmemory - m["used_memory_before"])
                                                                  // m["bytes_per_session"]),
             "extrapolated": True} for m in memory]


def measure(url: str, rows: list[bytes], o: CapacityOptions, admin_url: str | None = None) -> dict:
    """Every probe against the redis-server at ``url`` (see the module docstring): the replicas' load
    as ``url``'s user, INFO / MEMORY / BGREWRITEAOF as ``admin_url``'s (deploy/'s ACL keeps those from
    the replicas' user)."""
    import redis

    client = redis.Redis.from_url(admin_url or url, socket_timeout=120)
    sizes, counts = _ints(o.sizes), _ints(o.sessions)
    if len(sizes) != len(counts):
        raise DcssaError(f"--sizes {o.sizes} and --sessions {o.sessions} differ in length",
                         hint="give one session count per size")
    info = _redis_info(client)
    memory = memory_probe(client, rows, sizes, counts)
    waited = settle(client)  # a fill can start Redis's own AOF rewrite (auto-aof-rewrite-percentage)
    rep = {"redis": info, "memory": memory, "held": held_at_maxmemory(memory, info["maxmemory"]),
           "sweep": sweep(client, url, rows, o)}
    waited += settle(client)
    # the AOF probe rewrites the last (largest) filled dataset, still in place
    rep["aof"] = aof_probe(client, url, rows, o) if o.aof_seconds > 0 else None
    rep["waited_for_auto_rewrites_s"] = waited
    client.close()
    return rep


def redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def run(retriever, o: CapacityOptions, *, bundle: str = "", url: str | None = None,
        admin_url: str | None = None) -> dict:
    """The report: every probe on a redis-server started here (deploy/redis.conf, --max-memory), or
    on the one at ``url`` (with ``admin_url`` for the admin commands when ``url``'s user lacks them)."""
    from dcssa.benchmarks.topology import Redis, Unavailable

    rows = real_rows(retriever)
    env = {"cpu": cpu_model(), "isa": isa(), "cores": os.cpu_count(), "loadavg_start": os.getloadavg()}
    if url is not None:
        rep = measure(url, rows, o, admin_url)
    else:
        with tempfile.TemporaryDirectory(prefix="dcssa-redis-cap-") as tmp:
            try:
                server = Redis(Path(tmp) / "redis", maxmemory=o.max_memory).start()
            except Unavailable as exc:
                raise DcssaError(f"cannot start redis-server: {exc}", hint="apt-get install redis-server") from None
            try:
                rep = measure(server.url, rows, o, server.admin_url)
            except redis_errors() as exc:
                log = (Path(tmp) / "redis" / "redis.log").read_text(errors="replace")[-400:]
                raise DcssaError(f"the benchmark's redis-server failed: {type(exc).__name__}: {exc}; its log ends: "
                                 f"{log}", hint="retry; lower --sessions if it ran out of memory") from None
            finally:
                server.stop()
    env["loadavg_end"] = os.getloadavg()
    env["under_load"] = max(env["loadavg_start"][0], env["loadavg_end"][0]) > LOADED
    return {"machine": env, "bundle": bundle, "feature_dim": retriever.bundle.feature_dim,
            "rows": {"drawn_strokes": len(rows), "bytes": [len(r) for r in rows],
                     "mean_bytes": round(float(np.mean([len(r) for r in rows])), 1)},
            "options": {k: str(v) for k, v in asdict(o).items()}, **rep}


# -- report --------------------------------------------------------------------------------------------


def _avg(load) -> str:
    return " / ".join(f"{x:.1f}" for x in load)


def markdown(rep: dict) -> str:
    e, r = rep["machine"], rep["redis"]
    load = "under load" if e["under_load"] else "idle"
    lines = [f"# One Redis's capacity for drawing sessions ({load})", "",
             f"Machine: {e['cpu']} ({e['isa']}), {e['cores']} cores, load average {_avg(e['loadavg_start'])} at "
             f"start, {_avg(e['loadavg_end'])} at end. redis-server {r['version']} ({r['allocator']}), maxmemory "
             f"{r['maxmemory'] / 2**30:.2f} GiB, appendonly {r['appendonly']} ({r['appendfsync']}), on loopback; "
             f"the client processes share the cores with it. Bundle {rep['bundle']} (D = {rep['feature_dim']}): "
             f"rows of a real {rep['rows']['drawn_strokes']}-stroke session, {rep['rows']['mean_bytes']:.0f} B "
             "per stroke on average, cycled.", "",
             "| strokes per session | sessions filled | used_memory per session | MiB per 1,000 sessions | "
             "MEMORY USAGE of one | payload | sessions at maxmemory (extrapolated) |", "|---|---|---|---|---|---|---|"]
    for m, h in zip(rep["memory"], rep["held"]):
        lines.append(f"| {m['strokes']} | {m['sessions']:,} | {m['bytes_per_session']:,} B | {m['mib_per_thousand']} | "
                     f"{m['memory_usage_one_session']:,} B | {m['payload_bytes_per_session']:,} B | "
                     f"{h['sessions_at_maxmemory']:,} |")
    lines += ["", "Commits (version read + versioned commit of one stroke, a replica's store work per stroke):", "",
              "| replicas (processes) | sessions at once | commits/s | p50 ms | p99 ms | max ms | "
              "Redis's own µs per stroke (2 scripts) | load average |",
              "|---|---|---|---|---|---|---|---|"]
    for s in rep["sweep"]:
        lines.append(f"| {s['replicas']} | {s['replicas'] * s['concurrency_per_replica']} | {s['commits_per_s']:,} | "
                     f"{s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | {s['server_us_per_stroke']} | "
                     f"{s['loadavg'][0]} |")
    a = rep.get("aof")
    if a:
        lines += ["", f"AOF rewrite (BGREWRITEAOF of {a['used_memory'] / 2**20:,.0f} MiB while {a['replicas']} "
                      f"replicas commit): fork {a['latest_fork_usec'] / 1000:.1f} ms, rewrite {a['rewrite_s']} s "
                      f"({a['aof_last_bgrewrite_status']}).", "",
                  "| commits | count | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        for k in ("before", "during", "after"):
            st = a[k]
            lines.append(f"| {k} the rewrite | {st['commits']} | {st['p50_ms']} | {st['p99_ms']} | {st['max_ms']} |")
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    from dcssa.runtime.plotting import agg_figure

    fig = agg_figure((11, 4), "the Redis capacity plot", layout="tight")
    left, right = fig.subplots(1, 2)
    reps = [s["replicas"] for s in rep["sweep"]]
    left.plot(reps, [s["commits_per_s"] for s in rep["sweep"]], "o-", label="commits/s")
    left.set_xlabel("replicas (processes)")
    left.set_ylabel("commits/s")
    twin = left.twinx()
    twin.plot(reps, [s["p99_ms"] for s in rep["sweep"]], "s--", color="tab:red", label="p99 ms")
    twin.plot(reps, [s["p50_ms"] for s in rep["sweep"]], "^--", color="tab:orange", label="p50 ms")
    twin.set_ylabel("ms per commit")
    left.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    left.set_title("commits on one Redis under concurrent replicas", fontsize=9)
    a = rep.get("aof")
    if a:
        right.plot(a["timeline"]["t_s"], a["timeline"]["ms"], ".", ms=2)
        right.axvspan(*a["window_s"], color="tab:orange", alpha=0.3, label="BGREWRITEAOF")
        right.set_yscale("log")
        right.set_xlabel("s")
        right.set_ylabel("ms per commit")
        right.legend(fontsize=8)
        right.set_title("commit latency around an AOF rewrite", fontsize=9)
    fig.savefig(path, dpi=120)


def write(rep: dict, out: Path) -> list[Path]:
    """The three files, each written under a temporary name then renamed in."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in (("redis_capacity.json", lambda p: p.write_text(json.dumps(rep, indent=2) + "\n")),
                       ("redis_capacity.md", lambda p: p.write_text(markdown(rep))),
                       ("redis_capacity.png", lambda p: plot(rep, p))):
        tmp = out / f".{name}.tmp.png" if name.endswith(".png") else out / f".{name}.tmp"
        try:
            make(tmp)
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(out / name)
    return paths


@click.command("redis-capacity")
@bundle_option()
@gallery_option
@click_options(CapacityOptions)
@output_options(json="the report (without the AOF timeline)", quiet=False)
def command(bundle: Path, gallery: Path, as_json: bool, **kwargs) -> None:
    """Memory per session, commits/s under concurrent replicas and AOF-rewrite impact on one Redis."""
    options, _ = from_cli(CapacityOptions, kwargs)
    with fail_cleanly():
        from dcssa.runtime import Bundle, Gallery, Retriever

        _ints(options.replicas)
        b = Bundle.load(bundle)
        retriever = Retriever(b, Gallery.load(gallery, b), backend="ort-cpu", topk=10)
        rep = run(retriever, options, bundle=str(bundle))
        paths = write(rep, options.out)
    if as_json:
        click.echo(json.dumps({k: v for k, v in rep.items() if k != "aof"} | {"aof": rep["aof"] and {
            k: v for k, v in rep["aof"].items() if k != "timeline"}}, indent=2))
    else:
        click.echo(markdown(rep))
        click.echo("written: " + ", ".join(str(p) for p in paths))

"""``dcssa-bench soak``: hours of drawing on the scale-out topology, to show nothing grows that should not.

redis-server + N ``dcssa-rt serve --session-store redis://`` replicas + nginx (deploy/'s files, on
loopback only), with three kinds of client for ``--minutes``:

- steady drawers: sessions drawn stroke by stroke at ``--rate`` strokes/s in all, each sketch then
  deleted or abandoned (left to expire by ``--session-ttl``), retrying as the page does;
- an abusive client (``--abusive-rate`` requests/s): a session flood (opened, never used), strokes
  as fast as allowed on one session (reset at the bound), bodies over the limit (413 at nginx) and
  connections opened with half a request and dropped;
- a malformed client (``--malformed-rate`` requests/s): invalid JSON, NaN points, unknown
  sessions, strokes out of step (``after``), unknown routes.

Every ``--interval`` seconds it samples each replica's RSS and open file descriptors, nginx's and
Redis's RSS, Redis's used memory and key count, and the steady drawers' p50/p99 stroke latency in
that interval; then it writes soak.json, soak.md and soak.png to ``--out``. The summary compares the
last sample with the one after warm-up (ratio) and fits a slope per minute over the samples after
warm-up: a leak shows as a slope, a plateau as a ratio near 1. Bounded: every request has a
timeout, every client a rate, and the run ends after ``--minutes``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.env import cpu_model, isa
from dcssa.benchmarks.topology import Nginx, Redis, Replica, Unavailable, page_call
from dcssa.runtime import Bundle
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.options import click_options, from_cli, setting
from dcssa.runtime.progress import Progress, Reporter


@dataclass(frozen=True)
class SoakOptions:
    """One soak run; each field is a ``dcssa-bench soak`` flag."""

    minutes: float = setting(60.0, "How long the load runs.", type=click.FloatRange(0.1, 24 * 60))
    interval: float = setting(60.0, "Seconds between samples.", type=click.FloatRange(1))
    warmup: int = setting(1, "Samples before the baseline of the summary (allocators and caches filling).",
                          type=click.IntRange(0))
    rate: float = setting(4.0, "Strokes per second of the steady drawers, in all.", type=click.FloatRange(0.1, 200))
    drawers: int = setting(4, "Steady drawers (concurrent sessions being drawn).", type=click.IntRange(1, 64))
    strokes: int = setting(8, "Strokes per steady sketch.", type=click.IntRange(1, 64))
    abusive_rate: float = setting(4.0, "Requests per second of the abusive client (0: none).",
                                  type=click.FloatRange(0, 200))
    malformed_rate: float = setting(2.0, "Requests per second of the malformed client (0: none).",
                                    type=click.FloatRange(0, 200))
    replicas: int = setting(3, "dcssa-rt serve replicas behind nginx.", type=click.IntRange(1, 8))
    session_ttl: float = setting(120.0, "The replicas' --session-ttl: abandoned sessions leave Redis after it.",
                                 type=click.FloatRange(1))
    out: Path = setting(Path("bench-out"), "Folder for soak.json, soak.md, soak.png.",
                        type=click.Path(path_type=Path, file_okay=False))


@dataclass
class Traffic:
    """What the clients saw; the sampler takes the steady drawers' latencies interval by interval."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    retried: int = 0
    lost: int = 0  # a steady stroke that still failed after the page's one retry
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, who: str, status: int) -> None:
        with self.lock:
            by = self.statuses.setdefault(who, {})
            by[str(status)] = by.get(str(status), 0) + 1

    def take(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
        return out


def paced(rate: float, stop: threading.Event):
    """Ticks at ``rate`` per second (no catch-up burst after a slow call) until ``stop``."""
    period, nxt = 1.0 / rate, time.monotonic()
    while not stop.is_set():
        yield
        nxt = max(nxt + period, time.monotonic())
        stop.wait(max(0.0, nxt - time.monotonic()))


def drawer(port: int, rate: float, strokes: int, seed: int, traffic: Traffic, stop: threading.Event) -> None:
    rng, sid, sketch, i = np.random.default_rng(seed), None, [], 0
    for _ in paced(rate, stop):
        if sid is None or i == len(sketch):
            if sid is not None and rng.random() < 0.5:  # half the sketches are deleted, half abandoned
                traffic.count("steady", page_call(port, "DELETE", f"/v1/sessions/{sid}", timeout=30)[0])
            status, body, _ = page_call(port, "POST", "/v1/sessions", {}, timeout=30)
            traffic.count("steady", status)
            sid, sketch, i = (body["id"] if status == 201 else None), random_sketch(rng, strokes), 0
            continue
        t0 = time.perf_counter()
        status, body, seen = page_call(port, "POST", f"/v1/sessions/{sid}/strokes",
                                       {"stroke": sketch[i].tolist(), "after": i}, timeout=30)
        ms = (time.perf_counter() - t0) * 1e3
        traffic.count("steady", status)
        with traffic.lock:
            traffic.retried += len(seen) > 1
            if status == 200:
                traffic.latencies.append(ms)
            else:
                traffic.lost += 1
        i = i + 1 if status == 200 else len(sketch)  # a failed stroke ends the sketch (counted as lost)


def half_request(port: int) -> int:
    """A connection that sends part of a request's headers and goes away."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
    return 0


def abuser(port: int, rate: float, max_strokes: int, traffic: Traffic, stop: threading.Event) -> None:
    rng, sid, n, k = np.random.default_rng(99), None, 0, 0
    big = {"stroke": [[1.5, 2.5]] * 120_000}  # ~2 MB: over the 1 MB limit
    for _ in paced(rate, stop):
        k += 1
        if k % 4 == 0:
            status = page_call(port, "POST", "/v1/sessions", {}, timeout=30)[0]  # flood: never used again
        elif k % 8 == 1:
            status = page_call(port, "POST", "/v1/sessions", big, timeout=30)[0]
        elif k % 8 == 5:
            status = half_request(port)
        else:
            if sid is None or n >= max_strokes:
                status, body, _ = page_call(port, "POST", "/v1/sessions", {}, timeout=30)
                sid, n = (body.get("id") if status == 201 else None), 0
            else:
                status = page_call(port, "POST", f"/v1/sessions/{sid}/strokes",
                                   {"stroke": random_sketch(rng, 1)[0].tolist()}, timeout=30)[0]
                n += status == 200
        traffic.count("abusive", status)


MALFORMED = (
    ("POST", "/v1/sessions/{sid}/strokes", b"{not json"),
    ("POST", "/v1/sessions/{sid}/strokes", b'{"stroke": [[1, NaN], [2, 3]]}'),
    ("POST", "/v1/sessions/{sid}/strokes", b'{"stroke": []}'),
    ("POST", "/v1/sessions/AAAAAAAAAAAAAAAAAAAAAAAA/strokes", b'{"stroke": [[1, 2], [3, 4]]}'),
    ("POST", "/v1/sessions/{sid}/strokes", b'{"stroke": [[1, 2], [3, 4]], "after": 7}'),
    ("GET", "/v1/nothing-here", None),
    ("POST", "/v1/sessions/{sid}/undo", b""),
)


def malformed(port: int, rate: float, traffic: Traffic, stop: threading.Event) -> None:
    import http.client

    status, body, _ = page_call(port, "POST", "/v1/sessions", {}, timeout=30)
    sid = body.get("id", "none") if status == 201 else "none"
    for k, _ in enumerate(paced(rate, stop)):
        method, path, data = MALFORMED[k % len(MALFORMED)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path.format(sid=sid), body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            status = 0
        finally:
            conn.close()
        traffic.count("malformed", status)


def proc_stats(pid: int) -> dict:
    """RSS (MiB) and open file descriptors of one process, from /proc."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return {"rss_mib": round(rss, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def sample(t0: float, replicas: list[Replica], lb: Nginx, rs: Redis, traffic: Traffic) -> dict:
    lat = np.array(traffic.take())
    info = rs.client().info("memory")
    reps = [proc_stats(r.proc.pid) for r in replicas]
    return {
        "minute": round((time.monotonic() - t0) / 60, 2),
        "replica_rss_mib": [r["rss_mib"] for r in reps], "replica_fds": [r["fds"] for r in reps],
        "nginx_rss_mib": proc_stats(lb.proc.pid)["rss_mib"], "redis_rss_mib": proc_stats(rs.proc.pid)["rss_mib"],
        "redis_used_mib": round(info["used_memory"] / 2**20, 2), "redis_keys": int(rs.client().dbsize()),
        "strokes": int(len(lat)),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


SERIES = {  # name -> value of one sample (replicas: the largest, the one a leak would show first)
    "replica_rss_mib": lambda s: max(s["replica_rss_mib"]), "replica_fds": lambda s: max(s["replica_fds"]),
    "nginx_rss_mib": lambda s: s["nginx_rss_mib"], "redis_rss_mib": lambda s: s["redis_rss_mib"],
    "redis_used_mib": lambda s: s["redis_used_mib"], "redis_keys": lambda s: s["redis_keys"],
    "p50_ms": lambda s: s["p50_ms"], "p99_ms": lambda s: s["p99_ms"],
}


def flatness(samples: list[dict], warmup: int) -> dict:
    """Per series: the baseline (first sample after warm-up), the last, their ratio, and the least-squares
    slope per minute over the samples from the baseline on."""
    kept = samples[min(warmup, len(samples) - 1):]
    out = {}
    for name, get in SERIES.items():
        pts = [(s["minute"], get(s)) for s in kept if get(s) is not None]
        if not pts:
            continue
        t, v = np.array(pts, float).T
        slope = float(np.polyfit(t, v, 1)[0]) if len(pts) > 1 and np.ptp(t) > 0 else 0.0
        out[name] = {"baseline": v[0], "last": v[-1], "ratio": round(float(v[-1] / v[0]), 3) if v[0] else None,
                     "slope_per_minute": round(slope, 4), "max": float(v.max())}
    return out


def run_soak(bundle: Path, gallery: Path, opts: SoakOptions, work: Path, report: Reporter) -> dict:
    """Start the topology, run the clients, sample every interval; the report (see the module docstring)."""
    flags = ["--topk", "10", "--session-ttl", str(opts.session_ttl), "--store-timeout", "2", "-q"]
    try:
        rs = Redis(work / "redis").start()
    except Unavailable as exc:
        raise DcssaError(f"cannot start redis-server: {exc}", hint="apt-get install redis-server") from None
    procs: list = [rs]
    traffic, stop, samples = Traffic(), threading.Event(), []
    try:
        replicas = [Replica(bundle, gallery, rs.url, work / "logs", *flags) for _ in range(opts.replicas)]
        for r in replicas:
            procs.append(r.start())
        lb = Nginx([r.port for r in replicas], work / "nginx").start()
        procs.append(lb)
        max_strokes = Bundle.load(bundle).max_strokes
        threads = [threading.Thread(target=drawer, args=(lb.port, opts.rate / opts.drawers, opts.strokes, i,
                                                          traffic, stop), daemon=True) for i in range(opts.drawers)]
        if opts.abusive_rate:
            threads.append(threading.Thread(target=abuser, args=(lb.port, opts.abusive_rate, max_strokes, traffic,
                                                                  stop), daemon=True))
        if opts.malformed_rate:
            threads.append(threading.Thread(target=malformed, args=(lb.port, opts.malformed_rate, traffic, stop),
                                            daemon=True))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        count = max(1, round(opts.minutes * 60 / opts.interval))
        with report.bar(count, "soak", "sample") as bar:
            for k in range(1, count + 1):
                stop.wait(max(0.0, t0 + k * opts.interval - time.monotonic()))
                samples.append(sample(t0, replicas, lb, rs, traffic))
                if any(p.proc.poll() is not None for p in procs):
                    raise DcssaError("a process of the topology exited during the soak", path=work / "logs",
                                     hint="see its log")
                bar.update(1)
    finally:
        stop.set()
        for t in threads if "threads" in locals() else ():
            t.join(35)
        for p in reversed(procs):
            p.stop()
    return {"samples": samples, "summary": flatness(samples, opts.warmup), "statuses": traffic.statuses,
            "steady_retried": traffic.retried, "steady_lost": traffic.lost}


def write_text(path: Path, text: str) -> None:
    """Written beside, then renamed: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(rep: dict) -> str:
    o, m, f = rep["options"], rep["machine"], rep["summary"]
    first, last = rep["samples"][0], rep["samples"][-1]
    lines = [
        f"# Soak: {rep['minutes_run']:.1f} minutes over nginx + {o['replicas']} replicas + Redis", "",
        f"{m['cpu']} ({m['isa']}), {m['cores']} cores; load average {m['loadavg_start']} at the start, "
        f"{m['loadavg_end']} at the end{' (under load)' if max(m['loadavg_start'][0], m['loadavg_end'][0]) > 1.5 else ''}. "
        f"Bundle {rep['bundle']}, {rep['gallery']} photos. Steady drawers: {o['drawers']} at {o['rate']:g} strokes/s "
        f"in all; abusive client {o['abusive_rate']:g} req/s, malformed client {o['malformed_rate']:g} req/s; "
        f"session TTL {o['session_ttl']:g} s; a sample every {o['interval']:g} s.", "",
        f"Steady strokes lost (failed after the page's one retry): {rep['steady_lost']}; retried once: "
        f"{rep['steady_retried']}. Statuses: {json.dumps(rep['statuses'], sort_keys=True)}.", "",
        "| | first sample (min {:.1f}) | last sample (min {:.1f}) | baseline after warm-up | ratio last/baseline | "
        "slope per minute |".format(first["minute"], last["minute"]),
        "|---|---|---|---|---|---|",
    ]
    for name, get in SERIES.items():
        if name in f:
            s = f[name]
            lines.append(f"| {name} | {get(first)} | {get(last)} | {s['baseline']:g} | {s['ratio']} | "
                         f"{s['slope_per_minute']:g} |")
    lines += ["", "Replicas: the largest of the three at each sample. Every sample is in soak.json."]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> bool:
    """soak.png: memory, descriptors, Redis keys and latency against time (False without matplotlib)."""
    from dcssa.runtime.errors import MissingExtra
    from dcssa.runtime.plotting import agg_figure

    try:
        fig = agg_figure((10, 7), "the soak plot")
    except MissingExtra:
        return False
    t = [s["minute"] for s in rep["samples"]]
    axes = fig.subplots(2, 2)
    panels = (("MiB", ("replica_rss_mib", "nginx_rss_mib", "redis_rss_mib", "redis_used_mib")),
              ("open file descriptors (largest replica)", ("replica_fds",)), ("Redis keys", ("redis_keys",)),
              ("steady stroke latency, ms", ("p50_ms", "p99_ms")))
    for ax, (label, names) in zip(axes.flat, panels):
        for name in names:
            ax.plot(t, [SERIES[name](s) for s in rep["samples"]], marker=".", label=name)
        ax.set_xlabel("minute")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"dcssa-bench soak: {rep['minutes_run']:.1f} min, nginx + {rep['options']['replicas']} replicas + Redis")
    fig.savefig(path)
    return True


@click.command("soak")
@bundle_option()
@gallery_option
@click_options(SoakOptions)
@output_options(json="the report")
def command(bundle: Path, gallery: Path, as_json: bool, quiet: bool, **settings) -> None:
    """A bounded soak on loopback: steady, abusive and malformed clients over nginx + N replicas + Redis,
    sampling memory, file descriptors, Redis and latency (soak.json, soak.md, soak.png in --out)."""
    with fail_cleanly():
        opts, _ = from_cli(SoakOptions, settings)
        b = Bundle.load(bundle)
        from dcssa.runtime import Gallery

        size = len(Gallery.load(gallery, b, load_index=False))
        env = {"cpu": cpu_model(), "isa": isa(), "cores": os.cpu_count(), "loadavg_start": os.getloadavg()}
        with tempfile.TemporaryDirectory(prefix="dcssa-soak-") as tmp:
            got = run_soak(bundle, gallery, opts, Path(tmp), Progress(quiet=quiet or as_json))
        env["loadavg_end"] = os.getloadavg()
        rep = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
               "machine": env, "bundle": str(bundle), "gallery": size,
               "minutes_run": got["samples"][-1]["minute"] if got["samples"] else 0.0, **got}
        opts.out.mkdir(parents=True, exist_ok=True)
        write_text(opts.out / "soak.json", json.dumps(rep, indent=2) + "\n")
        write_text(opts.out / "soak.md", markdown(rep))
        plot(rep, opts.out / "soak.png")
        click.echo(json.dumps(rep) if as_json else markdown(rep))
        if rep["steady_lost"]:
            raise SystemExit(1)

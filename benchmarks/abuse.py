"""``dcssa-bench abuse``: does one abusive client slow the others down? Polite clients' p99, side by side.

Starts `dcssa-rt serve --api-keys` on loopback three times: (1) the polite clients alone, (2) with
one abusive client that keeps --abuse-concurrency strokes in flight without pause, no rate limit,
(3) the same with ``--rate-limit``, (4) that behind deploy/nginx.conf, the abusive client on its own
address (127.0.0.2; loopback itself is exempt from nginx's limits). Every client has its own API key (its principal), so the
limit counts them apart although they share 127.0.0.1. Polite clients draw at a human pace (one
stroke every --pace seconds) and record each stroke's latency; the abusive client's answers
(200 or 429) are counted. Reports the polite p50/p99 per phase and the p99 ratios to phase 1.

    .venv/bin/dcssa-bench abuse --bundle B --polite 3 --seconds 30 --rate-limit 4/s --out abuse.json

Bounded: each phase runs --seconds, every request has a timeout; loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.clients import to_client
from dcssa.benchmarks.env import environment
from dcssa.benchmarks.load_test import Server
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options, threads_option
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.serve.keys import add_key


async def polite(client, url: str, key: str, sketch: list, pace: float, until: float, lat: list[float]) -> None:
    """One person drawing: a session, then a stroke every ``pace`` s (a lost session is reopened)."""
    h = {"Authorization": f"Bearer {key}"}
    sid = (await client.post(url + "v1/sessions", headers=h)).json()["id"]
    i = 0
    while time.monotonic() < until:
        t0 = time.perf_counter()
        r = await client.post(f"{url}v1/sessions/{sid}/strokes", json={"stroke": sketch[i % len(sketch)]}, headers=h)
        if r.status_code == 200:
            lat.append((time.perf_counter() - t0) * 1e3)
        elif r.status_code == 409:  # the session bound: start another
            sid = (await client.post(url + "v1/sessions", headers=h)).json()["id"]
        i += 1
        await asyncio.sleep(max(0.0, pace - (time.perf_counter() - t0)))


async def abusive(client, url: str, key: str, sketch: list, until: float, counts: dict) -> None:
    """Strokes back to back, never waiting (Retry-After ignored): one of ``concurrency`` workers."""
    h = {"Authorization": f"Bearer {key}"}
    sid = (await client.post(url + "v1/sessions", headers=h)).json()["id"]
    i = 0
    while time.monotonic() < until:
        r = await client.post(f"{url}v1/sessions/{sid}/strokes", json={"stroke": sketch[i % len(sketch)]}, headers=h)
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
        if r.status_code == 409:
            sid = (await client.post(url + "v1/sessions", headers=h)).json()["id"]
        i += 1


async def phase(url: str, keys: dict, sketches: list, *, polite_n: int, abuse: int, pace: float,
                seconds: float, abuser_address: str | None = None) -> dict:
    """``abuser_address``: the abusive client's own loopback address (127.0.0.2: another client to nginx)."""
    import httpx

    until = time.monotonic() + seconds
    lat: list[float] = []
    counts: dict[int, int] = {}
    limits = httpx.Limits(max_connections=polite_n + abuse + 4)
    transport = None if abuser_address is None else httpx.AsyncHTTPTransport(local_address=abuser_address)
    async with (httpx.AsyncClient(timeout=120, limits=limits) as client,
                httpx.AsyncClient(timeout=120, limits=limits, transport=transport) as bad):
        tasks = [polite(client, url, keys[f"polite{i}"], sketches[i], pace, until, lat) for i in range(polite_n)]
        tasks += [abusive(bad, url, keys["abuser"], sketches[-1], until, counts) for _ in range(abuse)]
        await asyncio.gather(*tasks)
    arr = np.asarray(lat) if lat else np.asarray([np.nan])
    return {"polite_strokes": len(lat), "polite_p50_ms": float(np.percentile(arr, 50)),
            "polite_p99_ms": float(np.percentile(arr, 99)), "abusive_answers": {str(k): v for k, v in counts.items()},
            "loadavg": os.getloadavg()}


def _markdown(report: dict) -> str:
    """The record's table, with the machine and load, for docs/bench/abuse.md."""
    env = report["environment"]
    loads = [r["loadavg"][0] for r in report["phases"]]
    rows = ["| phase | polite p50 | polite p99 | p99 vs alone | polite strokes | abusive client's answers |",
            "|---|---|---|---|---|---|"]
    for r in report["phases"]:
        rows.append(f"| {r['name']} | {r['polite_p50_ms']:.0f} ms | {r['polite_p99_ms']:.0f} ms | "
                    f"{r['p99_ratio']:.2f}x | {r['polite_strokes']} | "
                    f"{', '.join(f'{k}: {v}' for k, v in sorted(r['abusive_answers'].items())) or '-'} |")
    under = " (under load: the machine is shared)" if max(loads) > 1.5 else ""
    return (f"{report['polite']} polite clients (one stroke every {report['pace_s']:g} s), "
            f"{report['seconds']:g} s per phase; {env['cpu']} ({env['isa']}), {env['cores']} cores, "
            f"load average {min(loads):.1f}-{max(loads):.1f}{under}.\n\n" + "\n".join(rows) + "\n")


def _table(report: dict) -> list[str]:
    lines = [f"{'phase':34s} {'polite p50':>11s} {'polite p99':>11s} {'p99 x alone':>11s} {'strokes':>8s}  abusive"]
    for r in report["phases"]:
        lines.append(f"{r['name']:34s} {r['polite_p50_ms']:9.0f}ms {r['polite_p99_ms']:9.0f}ms "
                     f"{r['p99_ratio']:10.2f}x {r['polite_strokes']:8d}  {r['abusive_answers']}  "
                     f"load {r['loadavg'][0]:.1f}")
    return lines


@click.command("abuse")
@bundle_option(demo_fallback=True)
@gallery_option
@click.option("--polite", "polite_n", type=click.IntRange(1), default=3, show_default=True,
              help="Clients drawing at a human pace.")
@click.option("--pace", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between a polite client's strokes.")
@click.option("--abuse-concurrency", type=click.IntRange(1), default=8, show_default=True,
              help="Strokes the abusive client keeps in flight.")
@click.option("--rate-limit", default="4/s", show_default=True, help="The limit of phase 3 (serve --rate-limit).")
@click.option("--rate-burst", type=click.IntRange(1), default=8, show_default=True)
@click.option("--seconds", type=click.FloatRange(5), default=30.0, show_default=True, help="Length of each phase.")
@click.option("--nginx/--no-nginx", default=True, show_default=True,
              help="A fourth phase behind deploy/nginx.conf, the abusive client on its own address (127.0.0.2).")
@threads_option()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Save the results as JSON.")
@output_options(json="the results")
def command(bundle: Path, gallery: Path, polite_n: int, pace: float, abuse_concurrency: int, rate_limit: str,
            rate_burst: int, seconds: float, nginx: bool, threads: int | None, out: Path | None, as_json: bool, quiet: bool) -> None:
    """One abusive client against polite ones, with and without --rate-limit: the polite p99, side by side."""
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"dcssa-abuse-{os.getpid()}"
    keys_file = work / "keys.json"
    keys = {name: add_key(keys_file, name)[1] for name in [f"polite{i}" for i in range(polite_n)] + ["abuser"]}
    rng = np.random.default_rng(0)
    sketches = [[to_client(s) for s in random_sketch(rng, 8)] for _ in range(polite_n + 1)]
    limited = ["--rate-limit", rate_limit, "--rate-burst", str(rate_burst)]
    plan = [("polite alone", 0, [], False), (f"+ abusive x{abuse_concurrency}, no limit", abuse_concurrency, [], False),
            (f"+ abusive x{abuse_concurrency}, --rate-limit {rate_limit}", abuse_concurrency, limited, False)]
    if nginx:
        plan.append((f"+ abusive x{abuse_concurrency}, --rate-limit, via nginx", abuse_concurrency, limited, True))
    report = {"polite": polite_n, "pace_s": pace, "abuse_concurrency": abuse_concurrency, "seconds": seconds,
              "environment": environment(threads), "phases": []}
    with fail_cleanly():
        for name, abuse, extra, edge in plan:
            if not (quiet or as_json):
                click.echo(f"{name}: {seconds:g} s", err=True)
            threads_flag = ["--threads", str(threads)] if threads else []
            server = Server(bundle, gallery, 8, 5.0, ["--backend", "ort-cpu", "-q", "--api-keys", str(keys_file),
                                                      *threads_flag, *extra])
            lb = None
            try:
                url = server.url
                if edge:  # deploy/nginx.conf in front: the polite clients on 127.0.0.1 (exempt), the abuser not
                    from dcssa.benchmarks.topology import Nginx

                    lb = Nginx([int(server.url.rstrip("/").rsplit(":", 1)[1])], work / "nginx").start()
                    url = f"http://127.0.0.1:{lb.port}/"
                got = asyncio.run(phase(url, keys, sketches, polite_n=polite_n, abuse=abuse, pace=pace,
                                        seconds=seconds, abuser_address="127.0.0.2" if edge else None))
            finally:
                if lb is not None:
                    lb.stop()
                server.stop()
            report["phases"].append({"name": name, "server_flags": extra, **got})
    shutil.rmtree(work, ignore_errors=True)  # the throw-away keys file
    base = report["phases"][0]["polite_p99_ms"]
    for r in report["phases"]:
        r["p99_ratio"] = r["polite_p99_ms"] / base
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**report, "command": " ".join(sys.argv)}, indent=2) + "\n")
        out.with_suffix(".md").write_text(_markdown(report))
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(_table(report)))

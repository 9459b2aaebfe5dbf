"""``dcssa-bench load-test``: K concurrent clients each drawing M strokes against `dcssa-rt serve`, on
loopback only.

For each batching setting it starts the server (`dcssa-rt serve --port 0`), runs K asyncio + httpx
clients that each open a session and post M strokes one after another (clients overlap, so strokes
of different sessions meet in the encoder queue), then checks isolation: every client's final top-K
must equal an offline ``StrokeSession`` fed the same strokes. Prints and optionally saves p50/p99
per-stroke latency (client-measured), throughput, errors and encoder batch sizes.

    .venv/bin/dcssa-bench load-test --bundle demo-out/bundle --clients 8 --strokes 6 \\
        --batching 1:0 --batching 8:10 --out load.json

``--batching MAX_BATCH:WINDOW_MS`` may be repeated (1:0 is the unbatched baseline). ``--url`` targets
an already running server instead (loopback addresses only). Bounded: at most --clients x --strokes
requests per setting, each with a timeout, and the whole run stops after --time-limit seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import click
import numpy as np

from dcssa.benchmarks.clients import metric, offline, run_clients, same_topk, to_client
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, gallery_option, output_options, threads_option
from dcssa.runtime.data.synthetic import random_sketch
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Progress


def _require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise DcssaError(f"{url} is not a loopback address", hint="the load test only targets 127.0.0.0/8, ::1 or localhost")


class Server:
    """`dcssa-rt serve` in a subprocess on a free loopback port; stopped with SIGINT."""

    def __init__(self, bundle: Path, gallery: Path, max_batch: int, window_ms: float, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "dcssa.runtime.cli", "serve", "--bundle", str(bundle), "--gallery", str(gallery),
               "--host", "127.0.0.1", "--port", "0", "--json", "--max-batch", str(max_batch),
               "--batch-window-ms", str(window_ms), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line: list[str] = []
        t = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(300)
        if not line or not line[0].strip():
            self.stop()
            raise DcssaError(f"the server did not start: {self.proc.stderr.read()[-1500:]}")
        self.url = json.loads(line[0])["url"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _settings(batching: tuple[str, ...], url: str | None) -> list[tuple[str, int | None, float | None]]:
    """(label, max_batch, window_ms) per server to start; one "external" entry for --url."""
    if url:
        return [("external", None, None)]
    settings = []
    for spec in batching:
        try:
            mb, win = spec.split(":")
            settings.append((f"max_batch={int(mb)} window={float(win):g}ms", int(mb), float(win)))
        except ValueError:
            raise click.BadParameter(f"{spec!r} is not MAX_BATCH:WINDOW_MS", param_hint="--batching") from None
    return settings


def _summary(setting: tuple[str, int | None, float | None], got: dict, want: list, gallery) -> dict:
    """One setting's row: latency percentiles, throughput, encoder batching, isolation."""
    name, mb, win = setting
    lat = np.array(got["latencies_ms"]) if got["latencies_ms"] else np.array([np.nan])
    mismatched = [i for i, (f, w) in enumerate(zip(got["finals"], want)) if not same_topk(f, w, gallery)]
    m = got["metrics"]
    batches = metric(m, "dcssa_encoder_batch_size_count")
    return {
        "setting": name, "max_batch": mb, "batch_window_ms": win,
        "strokes_ok": int(len(got["latencies_ms"])), "errors": got["errors"],
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "mean_ms": round(float(lat.mean()), 1), "wall_s": round(got["wall_s"], 2),
        "throughput_strokes_per_s": round(len(got["latencies_ms"]) / got["wall_s"], 2),
        "encoder_calls": int(batches) if batches == batches else None,
        "mean_batch": round(metric(m, "dcssa_encoder_batch_size_sum") / batches, 2) if batches else None,
        "isolation_ok": not mismatched, "mismatched_clients": mismatched,
    }


def _table(report: dict) -> list[str]:
    lines = [f"{report['clients']} clients x {report['strokes_per_client']} strokes, {report['gallery']} photos, "
             f"{report['cpu_count']} cores",
             f"{'setting':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'strokes/s':>10s} {'mean batch':>11s} {'errors':>7s}  isolation"]
    for r in report["runs"]:
        errs = sum(r["errors"].values())
        lines.append(f"{r['setting']:28s} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['throughput_strokes_per_s']:10.2f} "
                     f"{(r['mean_batch'] or 0):11.2f} {errs:7d}  "
                     f"{'ok' if r['isolation_ok'] else 'MISMATCH ' + str(r['mismatched_clients'])}")
    return lines


@click.command("load-test")
@bundle_option(demo_fallback=True)
@gallery_option
@click.option("--clients", type=click.IntRange(1, 256), default=8, show_default=True, help="K concurrent clients.")
@click.option("--strokes", type=click.IntRange(1, 64), default=6, show_default=True, help="M strokes per client.")
@click.option("--batching", multiple=True, default=("1:0", "8:10"), show_default=True,
              help="MAX_BATCH:WINDOW_MS of a server to test; repeat to compare (1:0 = no batching).")
@click.option("--url", default=None, help="Test this running server instead (loopback only; --batching ignored).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Per-request timeout, seconds.")
@click.option("--time-limit", type=float, default=600.0, show_default=True, help="Per-setting limit, seconds.")
@threads_option()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Save the results as JSON.")
@output_options(json="the results")
def command(bundle: Path, gallery: Path, clients: int, strokes: int, batching: tuple[str, ...], url: str | None,
            timeout: float, time_limit: float, threads: int | None, seed: int, out: Path | None, as_json: bool,
            quiet: bool) -> None:
    """K clients x M strokes against `dcssa-rt serve` on loopback; checks isolation; p50/p99, throughput."""
    progress = Progress(quiet=quiet or as_json)
    with fail_cleanly():
        b = Bundle.load(bundle)
        retriever = Retriever(b, Gallery.load(gallery, b), backend="ort-cpu", topk=10)
        rng = np.random.default_rng(seed)
        sketches = [[to_client(s) for s in random_sketch(rng, strokes)] for _ in range(clients)]
        settings = _settings(batching, url)
        if url:
            url = url if url.endswith("/") else url + "/"
            _require_loopback(url)
        with progress.bar(clients, "offline sessions") as bar:
            want = offline(retriever, sketches, bar)
        report = {"clients": clients, "strokes_per_client": strokes, "cpu_count": os.cpu_count(),
                  "backend": retriever.backend.name, "gallery": len(retriever.gallery), "runs": []}
        for setting in settings:
            server = None
            if url is None:
                extra = ["--backend", "ort-cpu", "-q"] + (["--threads", str(threads)] if threads else [])
                server = Server(bundle, gallery, setting[1], setting[2], extra)
            target = url or server.url
            _require_loopback(target)
            try:
                with progress.bar(clients * strokes, setting[0], "stroke") as bar:
                    got = asyncio.run(run_clients(target, sketches, timeout, time_limit, bar.update))
            finally:
                if server is not None:
                    server.stop()
            report["runs"].append(_summary(setting, got, want, retriever.gallery))

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**report, "command": " ".join(sys.argv)}, indent=2) + "\n")
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(_table(report)))
    if any(not r["isolation_ok"] or r["errors"] for r in report["runs"]):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.load_test` is deprecated: use `dcssa-bench load-test` (the same options)")
    command(prog_name="dcssa-bench load-test")

"""``dcssa-bench capacity``: the capacity model of docs/guides/capacity.md as a calculator.

Replicas' cores from the per-stroke cost, Redis's CPU from its own time per stroke, Redis's memory
from the sessions held (Little's law: new sessions per second x how long each stays) times bytes per
session. The Redis inputs come from a ``redis-capacity`` report (--redis-json) when given. Every
output is an extrapolation of measured inputs, and says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import output_options
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.options import click_options, from_cli, setting


@dataclass(frozen=True)
class Load:
    """A target load and the measured costs it is planned from (defaults: the README's example)."""

    people: int = setting(1000, "People drawing at once.", type=click.IntRange(1))
    stroke_every: float = setting(2.0, "Seconds between two strokes of one person.", type=click.FloatRange(0.01))
    core_seconds: float = setting(0.17, "CPU seconds per stroke on a replica (0.17: onnxruntime fp32, 0.11: int8).",
                                  type=click.FloatRange(0, min_open=True))
    utilisation: float = setting(0.7, "Target CPU use of the replicas.", type=click.FloatRange(0.05, 1.0))
    sketch_seconds: float = setting(40.0, "Seconds a person draws one sketch (one session).",
                                    type=click.FloatRange(0, min_open=True))
    sketch_every: float = setting(60.0, "Seconds between the starts of two sketches of one person.",
                                  type=click.FloatRange(0, min_open=True))
    ttl: float = setting(1800.0, "Seconds a session stays after its last stroke (the server's --session-ttl).",
                         type=click.FloatRange(0))
    bytes_per_session: int = setting(206_524, "Bytes one session takes in Redis (20 strokes, demo bundle).",
                                     type=click.IntRange(1))
    redis_us_per_stroke: float = setting(65.0, "Redis's own microseconds per stroke (INFO commandstats).",
                                         type=click.FloatRange(0))
    redis_memory_gb: float = setting(2.0, "maxmemory of one Redis, GB.", type=click.FloatRange(0, min_open=True))
    redis_core_share: float = setting(0.5, "Share of its core one Redis may use for strokes.",
                                      type=click.FloatRange(0.01, 1.0))


def plan(load: Load) -> dict:
    """The model's outputs for ``load`` (all extrapolated)."""
    strokes = load.people / load.stroke_every
    busy = strokes * load.core_seconds
    sessions_per_s = load.people / load.sketch_every
    held = sessions_per_s * (load.sketch_seconds + load.ttl)
    memory = held * load.bytes_per_session
    redis_cpu = strokes * load.redis_us_per_stroke / 1e6
    by_memory = memory / (load.redis_memory_gb * 1e9)
    by_cpu = redis_cpu / load.redis_core_share
    return {"strokes_per_s": round(strokes, 1), "busy_cores": round(busy, 1),
            "cores": math.ceil(busy / load.utilisation), "sessions_held": round(held),
            "redis_memory_gb": round(memory / 1e9, 2), "redis_cpu_cores": round(redis_cpu, 3),
            "redis_instances": max(1, math.ceil(max(by_memory, by_cpu))),
            "redis_bound_by": "memory" if by_memory >= by_cpu else "cpu", "extrapolated": True}


def from_report(path: Path, strokes: int | None = None) -> dict[str, float]:
    """Bytes per session (at ``strokes``, else the smallest size) and Redis's time per stroke (the
    largest over the sweep: the conservative one) from a redis_capacity.json."""
    try:
        rep = json.loads(Path(path).read_text())
        memory = {m["strokes"]: m["bytes_per_session"] for m in rep["memory"]}
        us = max(s["server_us_per_stroke"] for s in rep["sweep"] if s.get("server_us_per_stroke"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DcssaError(f"not a redis-capacity report ({type(exc).__name__}: {exc})", path=path,
                         hint="give the redis_capacity.json that `dcssa-bench redis-capacity` wrote") from None
    size = strokes if strokes is not None else min(memory)
    if size not in memory:
        raise DcssaError(f"the report measured sessions of {sorted(memory)} strokes, not {size}", path=path,
                         hint="pass --strokes with one of those")
    return {"bytes_per_session": memory[size], "redis_us_per_stroke": us}


@click.command("capacity")
@click_options(Load)
@click.option("--redis-json", type=click.Path(path_type=Path), default=None,
              help="A redis_capacity.json: its bytes per session and Redis time per stroke replace those options.")
@click.option("--strokes", type=click.IntRange(1), default=None,
              help="Session size (strokes) to read from --redis-json [default: its smallest].")
@output_options(json="the plan", quiet=False)
def command(redis_json: Path | None, strokes: int | None, as_json: bool, **kwargs) -> None:
    """Cores, replicas and Redis instances a load needs, from measured costs (an extrapolation)."""
    with fail_cleanly():
        given = from_report(redis_json, strokes) if redis_json is not None else {}
        load, _ = from_cli(Load, kwargs, **given)
        out = {"load": asdict(load), "plan": plan(load)}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    p = out["plan"]
    click.echo(f"{p['strokes_per_s']} strokes/s: {p['busy_cores']} busy cores, {p['cores']} cores at "
               f"{load.utilisation:.0%} use (one-thread replicas: {p['cores']}); {p['sessions_held']:,} sessions "
               f"held, {p['redis_memory_gb']} GB in Redis, {p['redis_cpu_cores']} of a Redis core: "
               f"{p['redis_instances']} Redis instance(s), bound by {p['redis_bound_by']} (EXTRAPOLATED)")

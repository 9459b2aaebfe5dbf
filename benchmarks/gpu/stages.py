"""Stages of gpu-check: ordered by value, each isolated, each inside a wall-clock budget.

A stage is one thing worth knowing from a GPU (an engine, a parity check, a latency table). The
table :data:`dcssa.benchmarks.gpu.bodies.STAGES` lists them most valuable first; :func:`plan` keeps
the ones this machine can run (each skipped one with why) and :func:`run_stages` runs them in that
order, each in its own ``try``, skipping a stage whose estimate no longer fits the budget or whose
inputs (an earlier stage) failed. The budget is a plan, not a timer: a running stage is not
interrupted (its subprocesses get the remaining time as their time-out).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcssa.benchmarks.gpu.report import Report


@dataclass(frozen=True)
class Stage:
    """One stage. ``estimate_s``: an ESTIMATE of its wall time on an H100-class GPU with a warm disk
    (not measured: no GPU has run it yet); Orin-class devices take about 3-5 times longer."""

    name: str
    what: str
    run: Callable[[Context], dict]
    needs: frozenset[str] = frozenset()
    after: tuple[str, ...] = ()
    estimate_s: float = 10.0
    quick: bool = False


@dataclass
class Context:
    """What stages share: options, the machine, earlier results, the log, and the backend factory
    (tests put stand-ins there)."""

    bundle: Path
    out: Path
    options: Any
    caps: set[str]
    results: dict[str, dict] = field(default_factory=dict)
    backend: Callable[[str], Any] = lambda name: name
    deadline: float = float("inf")
    clock: Callable[[], float] = time.monotonic

    @property
    def log(self) -> Path:
        return self.out / "gpu-check.log"

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())


def plan(stages: Iterable[Stage], caps: set[str], *, quick: bool, only: Iterable[str] = ()) -> tuple[list[Stage], dict[str, str]]:
    """(stages to run in value order, {skipped stage: why}) for a machine with ``caps``."""
    chosen, skipped = [], {}
    wanted = set(only)
    for s in stages:
        if wanted and s.name not in wanted:
            skipped[s.name] = "not asked for (--stage)"
        elif quick and not s.quick:
            skipped[s.name] = "--quick"
        elif missing := sorted(s.needs - caps):
            skipped[s.name] = f"this machine lacks {', '.join(missing)}"
        else:
            chosen.append(s)
    return chosen, skipped


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    message = getattr(exc, "message", None) or (text.splitlines()[0] if text else "")
    hint = getattr(exc, "hint", None)
    return f"{type(exc).__name__}: {message}" + (f" ({hint})" if hint else "")


def run_one(stage: Stage, ctx: Context) -> dict:
    """Run one stage; a failure is recorded (error + traceback in the log), never raised."""
    t0 = ctx.clock()
    try:
        result = stage.run(ctx) or {}
        record = {"status": "ok", **result}
    except Exception as exc:  # noqa: BLE001 - every stage is isolated: the next one runs regardless
        with ctx.log.open("a") as f:
            f.write(f"\n== stage {stage.name} failed ==\n{traceback.format_exc()}\n")
        record = {"status": "failed", "error": _error(exc)}
    record["seconds"] = round(ctx.clock() - t0, 2)
    record["estimate_s"] = stage.estimate_s
    return record


def run_stages(stages: list[Stage], ctx: Context, report: Report, *, say: Callable[[str], None] = print) -> None:
    """Run ``stages`` in order inside the context's deadline, writing the report after each. A stage
    waits for the stages it needs only when they are part of this run (``--stage parity-int8`` alone
    uses the engines an earlier run built)."""
    planned = {s.name for s in stages}
    for stage in stages:
        blocked = [a for a in stage.after if a in planned and ctx.results.get(a, {}).get("status") != "ok"]
        if blocked:
            report.skip(stage.name, f"needs {', '.join(blocked)}, which did not succeed")
            continue
        if stage.estimate_s > ctx.remaining():
            report.skip(stage.name, f"budget: about {stage.estimate_s:.0f} s needed (estimate), "
                                    f"{ctx.remaining():.0f} s left of --budget-s")
            continue
        say(f"gpu-check: {stage.name}: {stage.what}")
        record = run_one(stage, ctx)
        ctx.results[stage.name] = record
        report.stage(stage.name, record)
        say(f"gpu-check: {stage.name}: {record['status']} ({record['seconds']} s)"
            + (f": {record['error']}" if record["status"] == "failed" else ""))

"""The gpu-check report: ``gpu-check.json`` and ``gpu-check.md``, rewritten after every stage.

A lent GPU slot can end at any moment (a time-out, a crash in a driver): whatever ran by then is in
the report, which says ``"complete": false`` until the last stage and the verdict are in. Each write
goes to a temporary file renamed over the old one, so a reader never sees half a report.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

JSON_NAME = "gpu-check.json"
MD_NAME = "gpu-check.md"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Report:
    """The report's data and its two files; every change is written at once."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out = Path(out)
        self.data = {"complete": False, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **header, "stages": {}, "skipped": {}, "verdict": None}
        self.writes = 0
        self.write()

    def plan(self, order: list[str], skipped: dict[str, str]) -> None:
        self.data["plan"] = order
        self.data["skipped"].update(skipped)
        self.write()

    def stage(self, name: str, record: dict) -> None:
        self.data["stages"][name] = record
        self.write()

    def skip(self, name: str, why: str) -> None:
        self.data["skipped"][name] = why
        self.write()

    def finish(self, verdict: dict, seconds: float) -> None:
        self.data.update(verdict=verdict, seconds=round(seconds, 1), complete=True)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.out / JSON_NAME, json.dumps(self.data, indent=2, default=str) + "\n")
        _atomic_write(self.out / MD_NAME, markdown(self.data))
        self.writes += 1


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


def markdown(data: dict) -> str:
    """The report as a page a person reads first: verdict, stages, skipped stages, the machine."""
    verdict = data.get("verdict") or {}
    state = "complete" if data.get("complete") else "INCOMPLETE (the run stopped or is still running)"
    lines = [f"# gpu-check ({state})", "", f"started {data.get('started')}"]
    if verdict:
        lines += ["", f"**Verdict: {'PASS' if verdict.get('passed') else 'FAIL'}** (exit {verdict.get('exit')})", ""]
        lines += [f"- {p}" for p in verdict.get("problems", [])]
    lines += ["", "| stage | status | seconds | summary |", "|---|---|---|---|"]
    for name, rec in data.get("stages", {}).items():
        lines.append(f"| {name} | {rec.get('status')} | {_cell(rec.get('seconds', ''))} | "
                     f"{_cell(rec.get('summary') or rec.get('error') or '')} |")
    if data.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- **{k}**: {v}" for k, v in data["skipped"].items()]
    machine = data.get("machine") or {}
    if machine:
        lines += ["", "## Machine", "", f"- onnxruntime: {machine.get('onnxruntime')}"]
        lines += [f"- missing {k}: {v}" for k, v in (machine.get("missing") or {}).items()]
    return "\n".join(lines) + "\n"

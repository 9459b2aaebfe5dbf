"""`dcssa-bench`: one command line for every harness, with the shared options worded as on `dcssa-rt`;
`dcssa-rt bench`, its deprecated alias, runs it in a child process and never imports the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dcssa.benchmarks.cli import main as bench
from dcssa.runtime.cli import main as rt
from dcssa.runtime.cli.bench import relay

WIDE = {"terminal_width": 10_000, "max_content_width": 10_000}
SUBCOMMANDS = {"run", "gpu-check", "load-test", "openvino-fastpath", "ptq-compare", "scale-out", "search-scaling",
               "soak", "abuse", "redis-capacity", "session-fidelity", "capacity",
               "arnet-precision", "fit-embeddings"}
SHARED = ("--bundle", "--gallery", "--backend", "--precision", "--threads", "--json", "--quiet", "--force")
#: where a shared flag means what it means on this dcssa-rt command (the repeatable --backend of bench)
SAME_AS = {("load-test", "--bundle"): "serve", ("abuse", "--bundle"): "serve"}
#: a flag of the same name that means something else: gpu-check makes its --bundle when it is missing,
#: ptq-compare's --gallery is the fidelity gallery (as `dcssa-export calibrate --gallery`), fit-embeddings'
#: --bundle is only needed to fill its cache of real embeddings
OWN = {("gpu-check", "--bundle"), ("ptq-compare", "--gallery"), ("fit-embeddings", "--bundle")}
#: harnesses with no shared flag: gpu-check's are its own; arnet-precision is a group (run, table) whose
#: run takes NAME=BUNDLE pairs
NO_SHARED = {"gpu-check", "arnet-precision"}


def _option(cmd: click.Command, flag: str) -> click.Option | None:
    return next((p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts + p.secondary_opts), None)


def _wording(opt: click.Option) -> tuple:
    return opt.help.split(" as JSON")[-1] if opt.help.startswith("Print ") else opt.help, opt.default, opt.multiple


def test_every_harness_is_a_subcommand():
    assert set(bench.commands) == SUBCOMMANDS


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_shared_flags_are_worded_as_on_dcssa_rt(name):
    checked = 0
    for flag in SHARED:
        mine = _option(bench.commands[name], flag)
        if mine is None or (name, flag) in OWN:
            continue
        ref = SAME_AS.get((name, flag), "bench" if mine.multiple else "query")
        theirs = _option(rt.commands[ref], flag) or _option(rt.commands["bench"], flag)
        assert _wording(mine) == _wording(theirs), f"dcssa-bench {name} {flag} differs from dcssa-rt {ref}"
        checked += 1
    assert checked or name in NO_SHARED


def test_dcssa_rt_does_not_load_the_benchmarks():
    code = "import sys, dcssa.runtime.cli; print(sorted(m for m in sys.modules if m.startswith('dcssa.benchmarks')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_alias_relays_help_output_and_exit_code(tmp_path: Path):
    res = CliRunner().invoke(rt, ["bench", "--help"], **WIDE)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("`dcssa-rt bench` is a deprecated alias of `dcssa-bench run`")
    assert "Usage: dcssa-bench run [OPTIONS]" in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("--peers"))
    assert "[default: eager,channels-last,bf16,compile]" in line  # formatted at this context's width
    # a usage error of the child: its message on stderr, its exit code
    res = CliRunner().invoke(rt, ["bench", "--bundle", str(tmp_path), "--peers", "jit", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2
    assert "deprecated alias" in res.stderr and "jit: choose from eager" in res.stderr
    assert not (tmp_path / "b").exists()


def test_the_alias_runs_as_a_command(tmp_path: Path):
    exe = Path(sys.executable).with_name("dcssa-rt")
    if not exe.exists():
        pytest.skip("dcssa-rt is not installed beside this interpreter")
    proc = subprocess.run([str(exe), "bench", "--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "b"),
                           "--search-sizes", "", "--peers", ""], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2  # the child's: no bundle there
    assert "no bundle folder here" in proc.stderr and "deprecated alias" in proc.stderr


def test_relay_passes_partial_lines_through_and_the_exit_code():
    child = ("import sys, time\n"
             "sys.stderr.write('bar 50%\\r'); sys.stderr.flush(); time.sleep(0.2)\n"
             "sys.stderr.write('bar 100%\\n'); print('done'); sys.exit(3)\n")

    @click.command()
    def cmd() -> None:
        sys.exit(relay([sys.executable, "-c", child]))

    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 3
    assert res.stderr == "bar 50%\rbar 100%\n" and res.stdout == "done\n"


def test_load_test_runs_clients_against_a_served_bundle(bundle2: Path, gallery2: Path, tmp_path: Path):
    """The serving load test end to end, as small as it goes: 2 clients x 2 strokes, one unbatched server."""
    pytest.importorskip("httpx")
    out = tmp_path / "load.json"
    res = CliRunner().invoke(bench, ["load-test", "--bundle", str(bundle2), "--gallery", str(gallery2), "--clients", "2",
                                     "--strokes", "2", "--batching", "1:0", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert [r["strokes_ok"] for r in rep["runs"]] == [4] and rep["runs"][0]["isolation_ok"]
    assert json.loads(out.read_text())["runs"] == rep["runs"]


def test_ptq_compare_defaults_are_the_calibrate_jobs():
    """ptq-compare keeps literal copies (its CLI must not load dcssa.calibration): they must agree."""
    from dcssa.benchmarks import ptq_compare
    from dcssa.calibration.options import CalibrationOptions

    assert ptq_compare.MAX_CALIB == CalibrationOptions.max_calib
    assert ptq_compare.LATENCY_RASTERS == CalibrationOptions.latency_rasters

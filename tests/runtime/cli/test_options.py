"""The option groups shared by `dcssa-rt` and `dcssa-export`: same flags, same wording, one bundle policy."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dcssa.runtime.backends import backend_names
from dcssa.runtime.cli import main as rt
from dcssa.runtime.cli.console import stdout_for_json
from dcssa.runtime.cli.options import output_options

WIDE = {"terminal_width": 10_000, "max_content_width": 10_000}  # one help entry per line

# shared options each command must show (beyond its own)
RT_SHARED = {
    "query": ["--bundle", "--gallery", "--backend", "--precision", "--threads", "--json", "--quiet", "--triton-url", "--triton-prefix"],
    "index": ["--bundle", "--backend", "--threads", "--json", "--quiet", "--force", "--triton-url", "--triton-prefix"],
    "info": ["--bundle", "--gallery", "--json"],
    "make-dataset": ["--json", "--force"],
    "bench": ["--bundle", "--gallery", "--backend", "--precision", "--threads", "--json", "--quiet", "--force", "--triton-url", "--triton-prefix"],
    "eval": ["--bundle", "--gallery", "--backend", "--precision", "--threads", "--json", "--quiet", "--force", "--triton-url", "--triton-prefix"],
    "serve": ["--bundle", "--gallery", "--backend", "--precision", "--threads", "--json", "--quiet", "--triton-url", "--triton-prefix"],
    "calibrate-confidence": ["--bundle", "--gallery", "--backend", "--precision", "--threads", "--json", "--quiet",
                             "--force", "--triton-url", "--triton-prefix"],
    "api-key": [],  # a group: add/list/revoke each take --json (tests/runtime/serve/test_access.py)
}
EXPORT_SHARED = {
    None: ["--json", "--quiet", "--force", "--recipe", "--photos", "--gallery"],
    "demo-checkpoint": ["--json", "--quiet"],
    "calibrate": ["--threads", "--json", "--quiet", "--recipe", "--photos", "--gallery"],
    "engines": ["--json", "--quiet"],
    "triton": ["--json", "--quiet", "--force"],
}
# the minimum each command needs besides the option under test
REQUIRED = {"query": ["strokes.json"], "index": ["photos"], "make-dataset": ["out"], "eval": ["--dataset", "ds"],
            "calibrate-confidence": ["--dataset", "ds"]}
BACKEND_COMMANDS = ["query", "index", "bench", "eval", "serve", "calibrate-confidence"]


def export_cli() -> click.Group:
    pytest.importorskip("torch")
    from dcssa.export.cli import main

    return main


def invoke(cli: click.Command, args: list, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, **WIDE)


def help_of(cli: click.Group, name: str | None) -> str:
    res = invoke(cli, [*([name] if name else []), "--help"])
    assert res.exit_code == 0, res.output
    return res.output


def option(cli: click.Group, name: str | None, flag: str) -> click.Option:
    cmd = cli if name is None else cli.commands[name]
    return next(p for p in cmd.params if isinstance(p, click.Option) and flag in p.opts + p.secondary_opts)


def test_both_clis_register_exactly_their_commands():
    assert sorted(rt.commands) == sorted(RT_SHARED)
    assert sorted(export_cli().commands) == sorted(k for k in EXPORT_SHARED if k)


@pytest.mark.parametrize("name", sorted(RT_SHARED))
def test_rt_help_shows_shared_options(name):
    text = help_of(rt, name)
    for flag in RT_SHARED[name]:
        assert re.search(rf"^\s+(-\w, )?{flag}\b", text, re.M), f"{name} --help lacks {flag}"


@pytest.mark.parametrize("name", list(EXPORT_SHARED), ids=lambda n: n or "export")
def test_export_help_shows_shared_options(name):
    cli = export_cli()
    text = help_of(cli, name)
    for flag in EXPORT_SHARED[name]:
        assert re.search(rf"^\s+(-\w, )?{flag}\b", text, re.M), f"{name} --help lacks {flag}"


def test_shared_options_have_one_wording_everywhere():
    cli = export_cli()
    places = [(rt, n, f) for n, flags in RT_SHARED.items() for f in flags]
    places += [(cli, n, f) for n, flags in EXPORT_SHARED.items() for f in flags]
    wording: dict[str, set[str]] = {}
    for group, name, flag in places:
        opt = option(group, name, flag)
        if opt.multiple or (name == "serve" and flag == "--bundle") or (name, flag) == ("eval", "--gallery"):
            continue  # bench's repeatable flavour, serve's demo fallback, eval's OUT/gallery: said on purpose
        text = re.sub(r"Print .* as JSON", "Print ... as JSON", re.sub(r"existing .*\.", "existing ...", opt.help))
        # dcssa-export's --gallery is the fidelity report's (calibration data first): one wording of its own
        key = f"{flag} (fidelity)" if group is cli and flag == "--gallery" else flag
        wording.setdefault(key, set()).add(f"{text} default={opt.default!r}")
    for flag, seen in wording.items():
        assert len(seen) == 1, f"{flag} is worded or defaulted {len(seen)} ways: {seen}"
    assert "--gallery (fidelity)" in wording and "--photos" in wording  # both export forms were compared


@pytest.mark.parametrize("name", BACKEND_COMMANDS)
def test_backend_help_lists_the_registry(name):
    line = next(ln for ln in help_of(rt, name).splitlines() if ln.strip().startswith("--backend"))
    listed = re.search(r"(?:Backend|repeatable): (.*?)(?:, or auto| \[default)", line).group(1).split(", ")
    assert listed == list(backend_names())


@pytest.mark.parametrize("name", BACKEND_COMMANDS)
def test_unknown_backend_fails_listing_the_names(name, tmp_path):
    res = invoke(rt, [name, *REQUIRED.get(name, []), "--bundle", tmp_path, "--backend", "no-such-backend"])
    assert res.exit_code == 2, res.output
    assert "no-such-backend" in res.output
    for known in ("auto", *backend_names()):
        assert f"'{known}'" in res.output


# -- one bundle policy: --bundle, else $DCSSA_BUNDLE, else ./dcssa-bundle ------------------------------

BUNDLE_USERS = {"query": ["query", "strokes.json"], "info": ["info"], "eval": ["eval", "--dataset", "ds"],
                "serve": ["serve", "--backend", "ort-cpu"]}


@pytest.mark.parametrize("name", sorted(BUNDLE_USERS))
def test_env_bundle_is_used_and_named_when_missing(name, tmp_path):
    missing = tmp_path / "from-env"
    res = invoke(rt, BUNDLE_USERS[name], env={"DCSSA_BUNDLE": str(missing)})
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{missing}: no bundle folder here" in res.output
    flag = tmp_path / "from-flag"  # the flag wins over the environment
    res = invoke(rt, [*BUNDLE_USERS[name], "--bundle", flag], env={"DCSSA_BUNDLE": str(missing)})
    assert res.exit_code == 2 and str(flag) in res.output and str(missing) not in res.output


@pytest.mark.parametrize("name", sorted(BUNDLE_USERS))
def test_default_bundle_is_dcssa_bundle_in_the_working_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke(rt, BUNDLE_USERS[name], env={"DCSSA_BUNDLE": None})
    assert res.exit_code == 2 and "dcssa-bundle: no bundle folder here" in res.output


def test_serve_falls_back_to_the_demo_bundle_only_without_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-out/bundle").mkdir(parents=True)
    (tmp_path / "demo-out/bundle/manifest.json").write_text("{}")  # present, but no valid bundle
    res = invoke(rt, BUNDLE_USERS["serve"], env={"DCSSA_BUNDLE": None})
    assert res.exit_code == 2 and "serving the demo catalogue of `make demo`" in res.output
    assert "demo-out/bundle/manifest.json: not a bundle manifest (no model family)" in res.output
    res = invoke(rt, BUNDLE_USERS["serve"], env={"DCSSA_BUNDLE": "elsewhere"})
    assert res.exit_code == 2 and "elsewhere: no bundle folder here" in res.output
    assert "demo catalogue" not in res.output
    res = invoke(rt, ["info"], env={"DCSSA_BUNDLE": None})  # the fallback is serve's alone
    assert res.exit_code == 2 and "dcssa-bundle: no bundle folder here" in res.output


def test_env_bundle_is_loaded(bundle2):
    res = invoke(rt, ["info", "--json"], env={"DCSSA_BUNDLE": str(bundle2)})
    assert res.exit_code == 0, res.output
    assert Path(json.loads(res.stdout)["path"]) == bundle2


def test_calibrate_json_keeps_stdout_one_document(bundle2, dataset, gallery2, tmp_path):
    """onnxruntime's calibrators print to stdout; under --json that goes to stderr."""
    pytest.importorskip("onnx")
    out = tmp_path / "bundle"
    shutil.copytree(bundle2, out)
    res = invoke(export_cli(), ["calibrate", out, "--data", dataset, "--precision", "int8", "--recipe", "default",
                                "--gallery", gallery2, "--max-calib", "3", "--max-heldout", "4", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["precisions"] == ["fp32", "int8"] and "int8" in doc["fidelity"]


def test_json_mode_sends_what_the_work_prints_to_stderr():
    @click.command()
    @output_options(json="a document")
    def cmd(as_json: bool, quiet: bool) -> None:
        with stdout_for_json(as_json):
            print("chatter from a library")  # as onnxruntime's calibrators do
        click.echo(json.dumps({"ok": True}))

    res = invoke(cmd, ["--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == {"ok": True} and "chatter" in res.stderr
    res = invoke(cmd, [])
    assert res.stdout.startswith("chatter from a library\n") and res.stderr == ""

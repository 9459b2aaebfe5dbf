"""Each long job's options object is the one home of its settings: the command's options are generated
from its fields (flag, default, help), so the API, the CLI and the generated CLI reference agree."""

from __future__ import annotations

import pytest

from dcssa.runtime.cli import main as rt
from dcssa.runtime.data import DatasetOptions
from dcssa.runtime.evaluation import ConfidenceOptions, EvalOptions
from dcssa.runtime.indexing.options import IndexOptions
from dcssa.runtime.options import describe, flag_of, settings

JOBS = [("index", IndexOptions), ("eval", EvalOptions), ("calibrate-confidence", ConfidenceOptions),
        ("make-dataset", DatasetOptions)]


@pytest.mark.parametrize(("command", "cls"), JOBS, ids=[c for c, _ in JOBS])
def test_command_options_are_the_settings_of_its_options_object(command, cls):
    params = {p.name: p for p in rt.commands[command].params}
    for f in settings(cls):
        if not describe(f)["cli"]:
            continue  # filled by the shared runtime options (--backend, --precision, --threads) or --compare
        opt = params[f.name]
        assert flag_of(f) in opt.opts and opt.help == describe(f)["help"], f.name
        assert opt.default == f.default or (f.default is False and opt.is_flag), f.name


def test_serve_options_are_the_settings_of_serve_config_and_options():
    """dcssa-rt serve's flags come from ServeOptions and ServeConfig (the public-serving knobs included);
    defaults pass through the field's CLI conversion (kB for --max-body-kb); repeatable ones are tuples."""
    from click.testing import CliRunner

    from dcssa.runtime.serve.config import ServeConfig, ServeOptions

    params = {p.name: p for p in rt.commands["serve"].params}
    for cls in (ServeOptions, ServeConfig):
        for f in settings(cls):
            opt = params[f.name]
            d = describe(f)
            assert flag_of(f) in opt.opts and opt.help == d["help"], f.name
            default = f.default if d["to_cli"] is None or f.default is None else d["to_cli"](f.default)
            assert opt.default == default or (opt.multiple and tuple(opt.default or ()) == f.default), f.name
    for name in ("api_keys", "principal_header", "rate_limit", "rate_burst", "max_sessions_per_client", "cors_origins"):
        assert name in params
    assert params["cors_origins"].multiple and "--cors-origin" in params["cors_origins"].opts
    r = CliRunner().invoke(rt, ["serve", "--rate-limit", "fast", "--port", "0"])
    assert r.exit_code == 2 and "expected N/s" in r.output
    r = CliRunner().invoke(rt, ["serve", "--cors-origin", "shop.example", "--port", "0"])
    assert r.exit_code == 2 and "not an origin" in r.output and "Traceback" not in r.output

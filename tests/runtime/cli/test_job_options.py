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

"""EvalOptions and ConfidenceOptions are the one home of their jobs' settings: the CLI's options are
generated from them and contradictions are refused when they are made."""

from __future__ import annotations

import pytest

from dcssa.runtime.cli import main as rt
from dcssa.runtime.evaluation import ConfidenceOptions, EvalOptions
from dcssa.runtime.options import OptionsError, describe, flag_of, settings


@pytest.mark.parametrize(("command", "cls"), [("eval", EvalOptions), ("calibrate-confidence", ConfidenceOptions)])
def test_command_options_are_the_settings_of_the_options_object(command, cls):
    params = {p.name: p for p in rt.commands[command].params}
    for f in settings(cls):
        if not describe(f)["cli"]:
            continue  # configs (--backend/--precision/--compare), backend, precision, threads: shared options
        opt = params[f.name]
        assert flag_of(f) in opt.opts and opt.help == describe(f)["help"]
        assert opt.default == f.default or (f.default is False and opt.is_flag), f.name


def test_steps_follow_the_protocol_unless_given():
    assert EvalOptions().step_kind == "strokes"
    assert EvalOptions(protocol="paper").step_kind == "points20"
    assert EvalOptions(steps="points20").step_kind == "points20"
    with pytest.raises(OptionsError, match="points20"):
        EvalOptions(protocol="paper", steps="strokes")


def test_confidence_is_measured_on_other_sketches_than_it_is_fitted_on():
    with pytest.raises(OptionsError, match="both 'test'"):
        ConfidenceOptions(fit_split="test")

"""CalibrationOptions and EngineOptions are the one home of `calibrate`'s and `engines`' settings: the
commands' options are generated from their fields (flag, default, help), the quantiser choices are the
table's, and the 0.1 keyword arguments still describe the same options."""

from __future__ import annotations

import warnings

import pytest

from dcssa.calibration import task as T
from dcssa.calibration.commands import ONE_SHOT
from dcssa.calibration.int8 import Int8Recipe
from dcssa.calibration.options import CalibrationOptions, EngineOptions, legacy_options
from dcssa.calibration.quantisers import QUANTISERS
from dcssa.runtime.options import default_of, describe, flag_of, settings


def _cli_default(f):
    d, value = describe(f), default_of(f)
    return d["to_cli"](value) if d["to_cli"] is not None and value is not None else value


@pytest.fixture(scope="module")
def export_cli():
    from dcssa.export.cli import main

    return main


@pytest.mark.parametrize(("command", "cls"), [("calibrate", CalibrationOptions), ("engines", EngineOptions)])
def test_command_options_are_the_settings_of_its_options_object(export_cli, command, cls):
    params = {p.name: p for p in export_cli.commands[command].params}
    for f in settings(cls):
        if not describe(f)["cli"]:
            continue  # API only, or the shared --threads of dcssa.runtime.cli.options
        opt = params[f.name]
        assert flag_of(f).split("/")[0] in opt.opts and opt.help == describe(f)["help"], f.name
        # an off-by-default flag is declared as click declares a hand-written flag (no default: False)
        assert opt.default == _cli_default(f) or (_cli_default(f) is False and opt.is_flag), f.name
    if command == "calibrate":
        assert list(params["quantiser"].type.choices) == list(QUANTISERS)


def test_the_one_shot_export_shares_calibrates_options(export_cli):
    main = {p.name: p for p in export_cli.params}
    calibrate = {p.name: p for p in export_cli.commands["calibrate"].params}
    for name in ONE_SHOT:
        assert (main[name].opts, main[name].help, main[name].default) == \
               (calibrate[name].opts, calibrate[name].help, calibrate[name].default)


def test_the_old_keyword_arguments_describe_the_same_options():
    recipe = Int8Recipe(blocks=["Mixed_5b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = legacy_options(["int8", "fp16"], {"recipe": recipe, "gallery": "g", "max_calib": 3,
                                                 "objective": T.Objective("agreement")})
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert old == CalibrationOptions(precisions=("int8", "fp16"), recipe=recipe, fidelity_gallery="g", max_calib=3,
                                     objective="agreement")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert legacy_options(None, {"quantiser": "nncf"}).recipe == "all"  # 0.1: NNCF on every layer
        with pytest.raises(TypeError, match="no_such_option"):
            legacy_options(None, {"no_such_option": 1})
    options = CalibrationOptions(max_calib=5)
    assert legacy_options(options, {}) is options

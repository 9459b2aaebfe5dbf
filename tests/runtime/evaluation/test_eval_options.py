"""EvalOptions and ConfidenceOptions refuse contradictions when they are made (the CLI generated from
them: tests/runtime/cli/test_job_options.py)."""

from __future__ import annotations

import pytest

from dcssa.runtime.evaluation import ConfidenceOptions, EvalOptions
from dcssa.runtime.options import OptionsError


def test_steps_follow_the_protocol_unless_given():
    assert EvalOptions().step_kind == "strokes"
    assert EvalOptions(protocol="paper").step_kind == "points20"
    assert EvalOptions(steps="points20").step_kind == "points20"
    with pytest.raises(OptionsError, match="points20"):
        EvalOptions(protocol="paper", steps="strokes")


def test_confidence_is_measured_on_other_sketches_than_it_is_fitted_on():
    with pytest.raises(OptionsError, match="both 'test'"):
        ConfidenceOptions(fit_split="test")

"""NNCF's accuracy control driven by the task objective (``--quantiser nncf --recipe search``).

The validation function must BE the objective of our own searches: its score is checked against
the fidelity report of the same graph (a second code path: the whole held-out set encoded and
embedded at once, bounds from the report's bootstrap). The search is run where it must revert:
NNCF quantises the test recipe's two blocks, the limit is set under that graph's measured drop,
and the graph NNCF returns must meet it by the report's numbers, with the float layers it names
read off the graph. The quantised blocks keep the ranking (a group per layer) short.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from dcssa.calibration import fidelity as fd
from dcssa.calibration import task as T
from dcssa.calibration.int8 import Int8Recipe, node_block
from dcssa.calibration.job import prepare
from dcssa.calibration.options import CalibrationOptions
from dcssa.runtime import Bundle
from dcssa.runtime.contract import manifest as mf

pytest.importorskip("nncf", reason="nncf is not installed (pip install 'dcssa-rt[nncf]'; `make test` installs it)")

from dcssa.calibration.nncf_control import TaskScore, float_compute_nodes, quantize_with_task_control, tensorrt_options  # noqa: E402
from dcssa.calibration.nncf_ptq import NncfOptions, quantize_nncf  # noqa: E402


@pytest.fixture(scope="module")
def prep(bundle2, dataset, gallery2, tmp_path_factory):
    """3 calibration rasters; every held-out sketch of the fixture data (20 prefixes' worth)."""
    work = tmp_path_factory.mktemp("nncf-control")
    p = prepare(Bundle.load(bundle2), dataset, work, CalibrationOptions(fidelity_gallery=gallery2, max_calib=3,
                                                                        max_heldout=20, noise_floor=False))
    assert p.ref.targets is not None and len(p.ref.targets) >= 3
    return p


@pytest.fixture(scope="module")
def blocks_graph(prep, int8_blocks):
    """NNCF (MIXED) quantising only the test recipe's blocks, and its options."""
    opts = NncfOptions(ignored_recipe=Int8Recipe(blocks=int8_blocks))
    out = prep.work / "blocks.onnx"
    quantize_nncf(prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32"), out, prep.calib, opts)
    return out, opts


def _score(prep, objective=None, **kw):
    return TaskScore(dataclasses.replace(prep, objective=objective or T.Objective(), **kw))


def test_score_is_the_objective_of_the_fidelity_report(prep, blocks_graph):
    path, _ = blocks_graph
    score = _score(prep)
    n = len(score)
    fp32 = onnx.load(str(prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")))
    s0, per0 = score(fp32, range(n))
    assert s0 == pytest.approx(1.0) and per0 == pytest.approx([1.0] * n)  # fp32 against itself: no drop

    rep = fd.fidelity_report(prep.bundle, path, "int8", prep.held, prep.gallery, prep.ref, latency_rasters=0)
    expect = 1.0 - max(rep["task"][m]["drop_upper"] / lim for m, lim in T.DEFAULT_MAX_DROP.items())
    model = onnx.load(str(path))
    s, per = score(model, range(n))
    assert s == pytest.approx(expect, abs=1e-9)
    assert (s >= 0) == rep["meets_objective"]
    # per sketch: that sketch's own drop over the limit, in the order the positions are given
    s_rev, per_rev = score(model, reversed(range(n)))
    assert per_rev == pytest.approx(per[::-1])
    mine = T.per_sketch(fd.embed(prep.bundle, fd.load_head(prep.bundle, prep.backend),
                                 fd.encode(fd.load_encoder(prep.bundle, prep.backend, path), prep.held), prep.held),
                        prep.held, prep.gallery.embeddings, prep.ref.targets)
    by_hand = [1.0 - max((prep.ref.task[m][i] - mine[m][i]) / lim for m, lim in T.DEFAULT_MAX_DROP.items())
               for i in range(n)]
    assert per == pytest.approx(by_hand)


def test_refuses_without_ground_truth_or_with_the_agreement_objective(prep):
    from dcssa.calibration.int8 import QuantisationError

    with pytest.raises(QuantisationError, match="task objective"):
        _score(prep, T.Objective("agreement"))
    with pytest.raises(QuantisationError, match="positive"):
        _score(prep, T.Objective(max_drop={"m@B": 0.0}))


def test_accuracy_control_reverts_until_the_task_bound_holds(prep, blocks_graph, int8_blocks):
    path, opts = blocks_graph
    measured = fd.fidelity_report(prep.bundle, path, "int8", prep.held, prep.gallery, prep.ref,
                                  latency_rasters=0)["task"]["m@B"]["drop_upper"]
    assert measured > 0.005, "the fixture's quantised blocks must lose m@B for this test to mean anything"
    limit = measured / 2  # the quantised graph misses it; all float (fp32) meets it: reachable by reverting
    objective = T.Objective(max_drop={"m@B": limit})
    lines: list[str] = []
    score = _score(prep, objective, say=lines.append)
    out = prep.work / "controlled.onnx"
    ac = NncfOptions(ignored_recipe=opts.ignored_recipe, accuracy_control=True, ranking_sketches=2)
    summary = quantize_with_task_control(prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32"), out, prep.calib, score, ac)

    rep = fd.fidelity_report(prep.bundle, out, "int8", prep.held, prep.gallery, prep.ref, latency_rasters=0,
                             objective=objective)
    assert rep["meets_objective"] and rep["task"]["m@B"]["drop_upper"] <= limit
    graph = onnx.load(str(out))
    float_now = set(float_compute_nodes(graph))
    assert summary["float_layers"] and set(summary["float_layers"]) <= float_now
    # what it reverted lies inside the blocks it was allowed to quantise, the rest stays quantised
    assert {node_block(x) for x in summary["float_layers"]} <= set(int8_blocks)
    assert summary["quantised_nodes"] > 0
    assert summary["full_validations"][0]["score"] == pytest.approx(1.0)  # the float model
    assert summary["full_validations"][1]["m@B"]["drop_upper"] == pytest.approx(measured, abs=1e-9)
    assert any("meets the objective" in x for x in lines[1:])

    # the TensorRT graph keeps the same layers float, by its own quantisation
    sym = prep.work / "controlled-sym.onnx"
    quantize_nncf(prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32"), sym, prep.calib,
                  tensorrt_options(ac, summary["float_layers"]))
    assert set(summary["float_layers"]) <= set(float_compute_nodes(onnx.load(str(sym))))


def test_cli_search_with_nncf_records_the_search(bundle2, dataset, gallery2, tmp_path):
    """A bound every graph meets (m@B cannot drop by more than 1): NNCF reverts nothing, and says so."""
    from dcssa.export.cli import main

    out = tmp_path / "bundle"
    shutil.copytree(bundle2, out)
    res = CliRunner().invoke(main, ["calibrate", str(out), "--data", str(dataset), "--gallery", str(gallery2),
                                    "--quantiser", "nncf", "--recipe", "search", "--max-drop", "m@B=1",
                                    "--max-calib", "3", "--max-heldout", "8", "--no-noise-floor", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    search = m["calibration"]["int8"]["search"]
    assert search["kind"].startswith("nncf.quantize_with_accuracy_control")
    assert search["float_layers"] == [] and len(search["full_validations"]) == 2 and search["meets_objective"]
    b = Bundle.load(out)
    entry = b.graph_entry(mf.SKETCH_ENCODER, "int8")
    assert entry["quantiser"] == "nncf"
    rec = m["calibration"]["int8"]["recipe"]
    assert rec["accuracy_control"] is True and rec["ignored_nodes"] == []
    cpu = onnx.load(str(b.verified_file(entry["file"])))
    assert float_compute_nodes(cpu) == []  # nothing kept float: every layer NNCF quantises is quantised
    assert np.isclose(json.loads(res.stdout)["fidelity"]["int8"]["task"]["m@B"]["drop_upper"],
                      search["full_validations"][1]["m@B"]["drop_upper"])

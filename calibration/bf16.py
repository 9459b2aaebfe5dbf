"""Which blocks of the sketch encoder stay f32 when OpenVINO runs it in bf16: a measured plan.

bf16 is an execution mode over the fp32 graph (runtime/backends/openvino.py): the blocks a plan
lists as ``f32_scopes`` run in f32, the rest on the CPU's bf16 units, the graph split at block
boundaries. Without a plan the runtime keeps the family's default (DC-SSA: the first convolution
in f32). The search here chooses per bundle, on the held-out sketches, like the int8 search:

1. every block in bf16 (one segment, the cheapest plan) and the default plan, timed; when every
   block in bf16 keeps the objective there is nothing to keep in f32, and when the default plan
   keeps it with one block in f32 no other plan runs more in bf16 (:func:`settled_by_reference`);
2. otherwise per-block sensitivity: one block at a time in bf16, on a subset of the sketches;
3. the curve: blocks go to bf16 cumulatively, least sensitive first, each point timed against
   OpenVINO fp32 in interleaved blocks; the fastest point that keeps the objective wins, else the
   closest, said so.

The chosen f32 scopes are written into the sketch encoder's spec in the manifest, where the
OpenVINO backend reads them for ``--precision bf16``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx

from dcssa.calibration import task as T
from dcssa.calibration.options import CalibrationOptions
from dcssa.calibration.search import (
    choose,
    choose_or_closest,
    held_subset,
    point,
    sensitivity_order,
    task_text,
    walk_curve,
)
from dcssa.calibration.yardstick import Yardstick
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import DcssaError

_UNIT = (re.compile(r"^(/encoder/blocks/blocks\.\d+)(/|$)"), re.compile(r"^(/trunk/[^/]+)"),
         re.compile(r"^(/encoder/[^/]+)"), re.compile(r"^(/[^/]+)"))


def unit_of(name: str) -> str | None:
    """The module scope a bf16 plan switches as one piece: an Inception block or stem layer
    (``/trunk/Mixed_6b``), the spatial attention (``/attention``), a ViT block; None when unscoped."""
    for rx in _UNIT:
        m = rx.match(name)
        if m:
            return m.group(1)
    return None


def bf16_units(model: onnx.ModelProto) -> list[str]:
    """The graph's switchable scopes in graph order (only those holding real arithmetic)."""
    heavy = {"Conv", "MatMul", "Gemm"}
    units: list[str] = []
    for n in model.graph.node:
        u = unit_of(n.name)
        if u is not None and n.op_type in heavy and u not in units:
            units.append(u)
    return units


def _openvino(threads: int | None, f32_scopes: Sequence[str] | None = None):
    from dcssa.runtime.backends.openvino import OpenVINOBackend

    return OpenVINOBackend(threads=threads, bf16_f32_scopes=f32_scopes)


def check_bf16_machine() -> None:
    """A bf16 plan can only be measured where OpenVINO has native bf16 kernels."""
    from dcssa.runtime.backends.openvino import device_capabilities

    try:
        caps = device_capabilities("CPU")
    except Exception as exc:  # noqa: BLE001 - not installed or broken
        raise DcssaError(f"OpenVINO is not usable here ({exc})", hint="pip install 'dcssa-rt[openvino]'") from None
    if "BF16" not in caps:
        raise DcssaError(
            f"this CPU has no native bf16 (OpenVINO capabilities: {', '.join(caps)}): a bf16 plan measured here "
            "would time emulation", hint="run `dcssa-export calibrate --precision bf16` on the machine that serves "
                                         "(AMX or AVX512-BF16), or drop bf16 from --precision")


@dataclass
class Bf16Search:
    """bf16 plan evaluations against the yardstick (whose fp32 reference comes from onnxruntime, as for
    int8); ``options`` give the threads, latency rasters, the curve's patience and the sensitivity subset."""

    yard: Yardstick
    options: CalibrationOptions = field(default_factory=CalibrationOptions)
    latency_repeats: int = 2
    on_batch: Callable[[int], None] = lambda _n: None
    _baseline: object = None

    @property
    def spec(self) -> mf.GraphSpec:
        return self.yard.bundle.graph_spec(mf.SKETCH_ENCODER, "fp32")

    def baseline(self):
        """OpenVINO fp32 of the same graph: what a bf16 plan's latency is compared with."""
        if self._baseline is None:
            self._baseline = _openvino(self.options.threads).load(self.yard.fp32, self.spec)
        return self._baseline

    def evaluate(self, f32_scopes: Sequence[str], *, latency: bool = True, yard: Yardstick | None = None) -> dict:
        """The report of one plan, on ``yard`` [default: the search's] (a subset, for the sensitivity order)."""
        y = yard or self.yard
        enc = _openvino(self.options.threads, list(f32_scopes)).load(y.fp32, self.spec, precision="bf16")
        report = y.report(y.fp32, "bf16", encoder=enc, baseline=self.baseline() if latency else None,
                          latency_rasters=self.options.latency_rasters if latency else 0,
                          latency_repeats=self.latency_repeats, on_batch=self.on_batch)
        report["plan"] = {"f32_scopes": list(f32_scopes), "segments": list(enc.precisions)}
        return report


def settled_by_reference(points: Sequence[dict], default_f32: int, objective: T.Objective) -> tuple[dict, bool] | None:
    """(chosen, True) when the timed reference plans already decide the search, else None.

    ``points``: every block in bf16, then the default plan (``default_f32`` blocks in f32). Either all
    in bf16 keeps the objective (the faster plan of those kept wins), or the default plan keeps it
    with a single block in f32 while all in bf16 does not: every other plan keeps at least one block
    in f32 too, so none runs more of the graph in bf16 (on the 40-shape demo the curve's latency fell
    as blocks went to bf16, and the default plan was the fastest point measured, README).
    """
    if objective.faithful(points[0]):
        return choose(list(points), objective)
    if default_f32 == 1 and len(points) > 1 and objective.faithful(points[1]):
        return points[1], True
    return None


def _plan_point(ctx: Bf16Search, label: str, f32: Sequence[str]) -> dict:
    """One timed plan as a point of the record."""
    r = ctx.evaluate(f32)
    p = {**point(label, r), "f32_scopes": list(f32), "segments": r["plan"]["segments"]}
    ctx.yard.say(f"  {label:28s} {task_text(p, ctx.yard.objective)} top-1 {p['top1_agreement']:.1%} "
                 f"latency {p['latency_ratio']:.2f}x of OpenVINO fp32")
    return p


def _reference_points(ctx: Bf16Search, default: Sequence[str]) -> list[dict]:
    """Every block in bf16, then the family's default plan (when it keeps any block in f32)."""
    points = [_plan_point(ctx, "every block in bf16", [])]
    if default:
        names = ", ".join(s.rstrip("/").rsplit("/", 1)[-1] for s in default)
        points.append(_plan_point(ctx, f"default plan ({names} f32)", default))
    return points


def _sensitivity(ctx: Bf16Search, units: Sequence[str]) -> list[dict]:
    """Each block alone in bf16 (the rest f32), on the sensitivity subset of the held-out sketches."""
    small = held_subset(ctx.yard, ctx.options.sensitivity_sketches)
    ctx.yard.say(f"bf16 plan search: per-block sensitivity ({len(small.held.sketches)} held-out sketches)")
    sens = []
    for u in units:
        r = ctx.evaluate([v for v in units if v != u], latency=False, yard=small)
        sens.append({"block": u, **point(u, r)})
        ctx.yard.say(f"  only {u:24s} in bf16: top-1 {r['top1_agreement']:.1%} top-10 {r['top10_overlap']:.1%} "
                     f"cosine {r['embedding_cosine']['mean']:.4f}")
    return sens


def _curve(ctx: Bf16Search, units: Sequence[str], order: Sequence[str]) -> list[dict]:
    """Blocks to bf16 cumulatively in ``order``, each point timed."""
    def evaluate(blocks: list[str]) -> dict:
        f32 = [u for u in units if u not in blocks]
        r = ctx.evaluate(f32)
        return {**point(f"{len(blocks)} blocks bf16", r), "f32_scopes": f32, "segments": r["plan"]["segments"]}

    return walk_curve(order, evaluate, ctx.yard.objective, ctx.yard.say, ctx.options.patience)


def run_bf16_search(ctx: Bf16Search, units: Sequence[str] | None = None) -> dict:
    """The search of the module docstring; returns its record (also written to workdir/bf16-search.json)."""
    t0, y = time.perf_counter(), ctx.yard
    units = list(units or bf16_units(onnx.load(str(y.fp32), load_external_data=False)))
    default = list(ctx.spec.f32_scopes)
    y.say(f"bf16 plan search over {len(units)} blocks, objective: {y.objective.describe()}")
    reference_points = _reference_points(ctx, default)
    sens, order, curve = [], [], []
    settled = settled_by_reference(reference_points, len(default), y.objective)
    if settled is not None:
        chosen, ok = settled
        y.say("  every block in bf16 keeps the objective: no search needed, the faster plan of those timed wins"
              if y.objective.faithful(reference_points[0]) else
              "  the default plan keeps the objective with one block in f32, and every block in bf16 does not: "
              "no plan keeps more in bf16, no search needed")
    else:
        sens = _sensitivity(ctx, units)
        order = sensitivity_order(sens)
        y.say("bf16 plan search: trade-off curve (least sensitive blocks to bf16 first)")
        curve = _curve(ctx, units, order)
        chosen, ok = choose_or_closest([*curve, *reference_points], curve, y.objective, y.say, "bf16")
    record = {
        "objective": y.objective.record(),
        "units": units,
        "reference_points": reference_points,
        "sensitivity": sens,
        "order": order,
        "curve": curve,
        "chosen": {"label": chosen["label"], "f32_scopes": chosen["f32_scopes"], "meets_objective": ok,
                   "latency_ratio": chosen["latency_ratio"], "blocks": len(units) - len(chosen["f32_scopes"])},
        "latency_against": "OpenVINO fp32 of the same graph, interleaved blocks",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (y.work / "bf16-search.json").write_text(json.dumps(record, indent=2) + "\n")
    return record

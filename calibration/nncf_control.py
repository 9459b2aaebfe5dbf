"""NNCF's accuracy-controlled quantisation driven by the task objective (``--quantiser nncf --recipe search``).

``nncf.quantize_with_accuracy_control`` quantises every layer it can, then reverts groups of
quantisers to float, most harmful first, until a validation function's drop against the float model
is within ``max_drop``. What that function measures decides everything: with agreement to fp32 it
reverted layer after layer on the demo model without ever reaching the target (issue 19). Here it
is :class:`TaskScore`, the same rule our own searches use: every held-out sketch run through the
bundle's stroke head prefix by prefix, the target's rank at every stroke, and the one-sided 95%
upper bound of the paired-bootstrap drop of each ``--max-drop`` metric. The score is

    score = 1 - max over metrics of (upper bound of the drop / its limit)

so fp32 scores 1, a plan meets the objective exactly when its score is >= 0, and NNCF's absolute
``max_drop=1`` is our objective (1, not 0, for fp32: NNCF divides by the float model's score). Per sketch (what NNCF ranks its groups on and picks the ranking
subset by) the value is the same ratio for that sketch's own drop.

NNCF chooses the float layers for the onnxruntime graph (preset MIXED); the TensorRT graph
(PERFORMANCE, signed activations) is quantised with those same layers ignored, not searched again.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from dcssa.calibration import fidelity as fd
from dcssa.calibration import task as T
from dcssa.calibration.calibset import PrefixSet
from dcssa.calibration.int8 import QuantisationError
from dcssa.calibration.nncf_ptq import (
    NncfOptions,
    advanced_parameters,
    calibration_dataset,
    ignored_nodes,
    nncf_output,
    qdq_summary,
    require_nncf,
    write_qdq_graph,
)
from dcssa.calibration.yardstick import Yardstick
from dcssa.runtime.backends import Runner

#: compute ops whose quantisation NNCF's accuracy control decides (the rest follow them)
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


@dataclass
class TaskScore:
    """The validation function NNCF calls: ``score(model, positions) -> (score, per-sketch values)``.

    ``positions`` index the held-out sketches of the yardstick that have their photo in the gallery
    (``ref.targets``); NNCF's validation dataset is ``range(len(self))``. Every call with a new model
    object writes it once to the work folder and loads it with the yardstick's backend (onnxruntime
    CPU, as the bundle's int8 runs).
    """

    yard: Yardstick
    calls: int = 0
    full_validations: list[dict] = field(default_factory=list)
    _model: object = None
    _last_full: object = None
    _runner: Runner | None = None
    _head: Runner | None = None

    def __post_init__(self) -> None:
        y = self.yard
        if y.ref.task is None or y.ref.targets is None:
            raise QuantisationError(
                "NNCF's accuracy control needs the task yardstick: held-out sketches that name their photo in the gallery",
                hint="give data with photos (a make-dataset folder, a QMUL pickle with its photos, --photos), or "
                     "use --recipe default/all with --quantiser nncf")
        if y.objective.kind != "task":
            raise QuantisationError("NNCF's accuracy control is driven by the task objective here",
                                    hint="drop --objective agreement, or use the ort recipe search for agreement")
        self.limits = {m: float(v) for m, v in y.objective.max_drop.items()}
        bad = [m for m, v in self.limits.items() if v <= 0]
        if bad:
            raise QuantisationError(f"--max-drop must be positive for NNCF's accuracy control ({', '.join(bad)})")
        self._head = fd.load_head(y.bundle, y.backend)

    def __len__(self) -> int:
        return len(self.yard.ref.targets)

    def dataset(self):
        nncf = require_nncf()
        return nncf.Dataset(list(range(len(self))))

    def _encoder(self, model: onnx.ModelProto) -> Runner:
        if self._model is not model:  # NNCF hands the same object for every call on one candidate
            with tempfile.NamedTemporaryFile(suffix=".onnx", dir=self.yard.work, delete=False) as f:
                path = Path(f.name)
            try:
                path.write_bytes(model.SerializeToString())
                self._runner = fd.load_encoder(self.yard.bundle, self.yard.backend, path)
            finally:
                path.unlink(missing_ok=True)
            self._model = model  # held, so its id cannot be reused while cached
        return self._runner

    def values(self, model: onnx.ModelProto, positions: Sequence[int]) -> dict[str, np.ndarray]:
        """Per-sketch task metrics of ``model`` on the held-out sketches at ``positions`` (in that order)."""
        y = self.yard
        targets = y.ref.targets
        sketches = [targets.sketches[p] for p in positions]
        sub = y.held.only(sketches)
        emb = fd.embed(y.bundle, self._head, fd.encode(self._encoder(model), sub), sub)
        sub_targets = T.SketchTargets(list(range(len(sketches))), [targets.rows[p] for p in positions],
                                      targets.gallery_size)
        return T.per_sketch(emb, sub, y.gallery.embeddings, sub_targets)

    def score(self, reference: dict[str, np.ndarray], mine: dict[str, np.ndarray], keys: Sequence[str]) -> tuple[float, dict]:
        task = T.compare_task({m: reference[m] for m in self.limits}, {m: mine[m] for m in self.limits}, keys=keys)
        return 1.0 - max(task[m]["drop_upper"] / lim for m, lim in self.limits.items()), task

    def __call__(self, model: onnx.ModelProto, items: Iterable[int]) -> tuple[float, list[float]]:
        positions, y = [int(i) for i in items], self.yard
        self.calls += 1
        mine = self.values(model, positions)
        reference = {m: y.ref.task[m][positions] for m in self.limits}
        keys = [y.held.sketches[y.ref.targets.sketches[p]].name for p in positions]
        score, task = self.score(reference, mine, keys)
        per = np.max(np.stack([(reference[m] - mine[m]) / lim for m, lim in self.limits.items()]), axis=0)
        if len(positions) == len(self):
            rec = {"score": score, **{m: task[m] for m in self.limits}}
            if self.full_validations and self._last_full is model:
                self.full_validations[-1] = rec  # NNCF validates the float model twice (its mode check first)
                return float(score), [float(1.0 - v) for v in per]
            self._last_full = model
            self.full_validations.append(rec)
            y.say(f"  nncf accuracy control, validation {len(self.full_validations)}: "
                  + " ".join(f"{m} drop<={task[m]['drop_upper']:+.3f}" for m in self.limits)
                  + (" (meets the objective)" if score >= -1e-12 else ""))
        return float(score), [float(1.0 - v) for v in per]


def float_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul/Gemm nodes whose inputs are not dequantised: the layers a Q/DQ graph keeps float."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in COMPUTE_OPS and not any(x in dq_out for x in n.input[:2])]


def _ignored_names(model: onnx.ModelProto, options: NncfOptions) -> list[str]:
    names = list(options.ignored_nodes)
    if options.ignored_recipe is not None:
        names += ignored_nodes(model, options.ignored_recipe)
    return names


def quantize_with_task_control(
    fp32_path: Path,
    out_path: Path,
    calib: PrefixSet,
    score: TaskScore,
    options: NncfOptions,
    *,
    input_name: str = "images",
    quiet: bool = True,
    on_batch: Callable[[int], None] = lambda _n: None,
) -> dict:
    """Write NNCF's accuracy-controlled Q/DQ graph of ``fp32_path`` (preset of ``options``); returns a
    summary with the float layers it chose and the validations it ran."""
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    model = onnx.load(str(fp32_path))
    names = _ignored_names(model, options)
    dataset, n = calibration_dataset(nncf, calib, input_name, on_batch), len(calib)
    restorer = AdvancedAccuracyRestorerParameters(
        max_num_iterations=options.max_iterations,
        ranking_subset_size=min(options.ranking_sketches, len(score)),
        num_ranking_workers=1,  # the score holds one loaded candidate at a time
    )
    t0 = time.perf_counter()
    with nncf_output(nncf, quiet):
        q = nncf.quantize_with_accuracy_control(
            model,
            dataset,
            score.dataset(),
            score,
            max_drop=1.0,  # the score is 1 - max(upper bound / limit): a drop of 1 is exactly --max-drop
            drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset(options.preset),
            target_device=nncf.TargetDevice[options.target_device],
            subset_size=min(n, options.subset_size or n),
            fast_bias_correction=options.fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=sorted(set(names))) if names else None,
            advanced_quantization_parameters=advanced_parameters(options),
            advanced_accuracy_restorer_parameters=restorer,
        )
    seconds = time.perf_counter() - t0
    q = write_qdq_graph(q, out_path, options)
    float_layers = [x for x in float_compute_nodes(q) if x not in set(names)]
    return {**qdq_summary(q), "ignored_nodes": len(set(names)), "float_layers": float_layers,
            "calibration_rasters": min(n, options.subset_size or n), "validations": score.calls,
            "full_validations": score.full_validations, "seconds": seconds}


def tensorrt_options(options: NncfOptions, float_layers: Sequence[str]) -> NncfOptions:
    """The TensorRT graph's options: PERFORMANCE (signed activations) with the chosen float layers ignored."""
    return replace(options.for_target(symmetric=True), accuracy_control=False,
                   ignored_nodes=tuple(sorted(set(options.ignored_nodes) | set(float_layers))))

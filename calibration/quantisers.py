"""The int8 quantisers as a table: what each makes of ``--recipe``, and the stage that runs it.

Every quantiser writes the same two graphs of the sketch encoder from one plan: activations as the
onnxruntime CPU kernels want them, with latency, and int8 symmetric ones for TensorRT. They differ
in who places the quantisers and what ``--recipe`` means (see ``RECIPE_HELP`` in :mod:`.options`):

- ``ort``: onnxruntime.quantization with our ranges and a recipe of blocks, searched unless given;
- ``nncf``: NNCF's post-training quantisation; the recipe's float blocks are its ignored scope, or
  ``search`` hands the choice of float layers to NNCF's accuracy control on the task objective;
- ``dynamic`` / ``weight-only``: the recipe's MatMuls with activation ranges per run, or int8
  weights only (:mod:`.transformer`; for ViTs, whose activation outliers defeat static ranges).

Light on purpose (the CLI reads the names to build ``--quantiser``): the work is imported when a
stage runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dcssa.runtime.errors import DcssaError

if TYPE_CHECKING:
    from dcssa.calibration.int8 import Int8Recipe
    from dcssa.calibration.nncf_ptq import NncfOptions
    from dcssa.calibration.options import CalibrationOptions
    from dcssa.calibration.stages import StageOutput
    from dcssa.calibration.yardstick import Yardstick


@dataclass(frozen=True)
class Int8Plan:
    """What the options come to for one quantiser, read before any work (a bad recipe file fails
    in a second, not after the fp32 reference): ort's recipe (None: search) and the search record
    kept with it, or NNCF's options."""

    recipe: Int8Recipe | None = None
    search_record: dict | None = None
    nncf: NncfOptions | None = None


class Quantiser:
    """One entry of :data:`QUANTISERS`: its name and the manifest's activation labels of its two graphs."""

    name: str
    cpu_activations: str
    tensorrt_activations: str

    def plan(self, options: CalibrationOptions, family: str) -> Int8Plan:
        """``options.recipe`` (and the NNCF settings) read for a bundle of model ``family``."""
        raise NotImplementedError

    def stage(self, yard: Yardstick, options: CalibrationOptions, plan: Int8Plan) -> StageOutput:
        """The int8 stage: both graphs, their fidelity reports and the manifest's calibration.int8 record."""
        raise NotImplementedError


class OrtQuantiser(Quantiser):
    # activation encoding per target: see the docstring of :mod:`.int8`
    name = "ort"
    cpu_activations = "uint8 asymmetric (onnxruntime CPU)"
    tensorrt_activations = "int8 symmetric (zero point 0)"

    def plan(self, options: CalibrationOptions, family: str) -> Int8Plan:
        from dcssa.calibration.recipes import load_recipe

        if options.smooth_quant is not None:
            raise DcssaError("--smooth-quant is an NNCF option", hint="add --quantiser nncf, or drop --smooth-quant")
        if isinstance(options.recipe, str) and options.recipe == "all":
            raise DcssaError("--recipe all (no ignored scope) is for --quantiser nncf",
                             hint="with ort pass search, default or a recipe JSON file")
        return Int8Plan(recipe=load_recipe(options.recipe, family), search_record=options.search_record)

    def stage(self, yard: Yardstick, options: CalibrationOptions, plan: Int8Plan) -> StageOutput:
        from dcssa.calibration.stages import int8_stage

        return int8_stage(yard, options, plan.recipe, search_record=plan.search_record, quantiser=self)


class NncfQuantiser(Quantiser):
    name = "nncf"
    cpu_activations = "nncf mixed: asymmetric activations (uint8 after ReLU, int8 with zero point elsewhere)"
    tensorrt_activations = "nncf performance: int8 symmetric (zero point 0; NNCF's uint8 ones rewritten as int8)"

    def plan(self, options: CalibrationOptions, family: str) -> Int8Plan:
        """``options.nncf`` [default: MIXED, fast bias correction] with ``--smooth-quant``, and: the
        recipe's float blocks ignored (no recipe: the family's default), ``all``: none ignored,
        ``search``: NNCF's accuracy control ranked on ``--sensitivity-sketches``."""
        from dcssa.calibration.nncf_ptq import NncfOptions
        from dcssa.calibration.recipes import load_recipe

        spec = "default" if options.recipe is None else options.recipe
        nncf = options.nncf or NncfOptions()
        if options.smooth_quant is not None:
            nncf = replace(nncf, smooth_quant=dict(options.smooth_quant))
        if isinstance(spec, str) and spec == "search":  # NNCF's own search of the float layers
            return Int8Plan(nncf=replace(nncf, accuracy_control=True, ranking_sketches=options.sensitivity_sketches))
        if nncf.ignored_recipe is None and not (isinstance(spec, str) and spec == "all"):
            nncf = replace(nncf, ignored_recipe=load_recipe(spec, family))
        return Int8Plan(nncf=nncf)

    def stage(self, yard: Yardstick, options: CalibrationOptions, plan: Int8Plan) -> StageOutput:
        from dcssa.calibration.stages import nncf_int8_stage

        return nncf_int8_stage(yard, plan.nncf, latency_rasters=options.latency_rasters, quantiser=self)


class WeightPlanQuantiser(Quantiser):
    """The transformer plans that need no activation ranges (:mod:`.transformer`): onnxruntime's
    dynamic int8, or int8 weights only. ``--recipe`` (default: the family's) names the MatMuls."""

    def plan(self, options: CalibrationOptions, family: str) -> Int8Plan:
        from dcssa.calibration.recipes import load_recipe

        if options.smooth_quant is not None:
            raise DcssaError("--smooth-quant is an NNCF option", hint="add --quantiser nncf, or drop --smooth-quant")
        spec = "default" if options.recipe is None else options.recipe
        if isinstance(spec, str) and spec in ("search", "all"):
            raise DcssaError(f"--quantiser {self.name} takes no --recipe {spec}",
                             hint="pass default or a recipe JSON file (its blocks name the MatMuls)")
        return Int8Plan(recipe=load_recipe(spec, family))

    def stage(self, yard: Yardstick, options: CalibrationOptions, plan: Int8Plan) -> StageOutput:
        from dcssa.calibration.stages import weight_plan_stage

        return weight_plan_stage(yard, options, plan.recipe, quantiser=self)


class DynamicQuantiser(WeightPlanQuantiser):
    name = "dynamic"
    cpu_activations = "int8 dynamic (ranges computed per run; onnxruntime MatMulInteger)"
    tensorrt_activations = "int8 symmetric static (the same MatMuls; TensorRT has no dynamic int8)"


class WeightOnlyQuantiser(WeightPlanQuantiser):
    name = "weight-only"
    cpu_activations = "float (int8 weights dequantised in the graph)"
    tensorrt_activations = "float (int8 weights only: TensorRT's weight-only quantisation)"


#: every int8 quantiser by its ``--quantiser`` name
QUANTISERS: dict[str, Quantiser] = {q.name: q for q in (OrtQuantiser(), NncfQuantiser(), DynamicQuantiser(),
                                                        WeightOnlyQuantiser())}


def quantiser_named(name: str) -> Quantiser:
    try:
        return QUANTISERS[name]
    except KeyError:
        raise DcssaError(f"unknown quantiser {name!r}", hint=f"choose among {', '.join(QUANTISERS)}") from None

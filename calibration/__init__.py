"""dcssa.calibration: FP16 / INT8 graphs that keep the rankings, and TensorRT engines.

- :mod:`.calibset` -- calibration and held-out sets: every stroke prefix, drawn as a session draws it
- :mod:`.reader` -- onnxruntime ``CalibrationDataReader`` over those prefixes
- :mod:`.int8` -- Q/DQ quantisation of a recorded :class:`~.int8.Int8Recipe`
- :mod:`.search` -- calibration methods, per-block sensitivity, the fidelity/latency trade-off curve
- :mod:`.fp16` -- FP16 graphs with LayerNorm, the attention scores and the normalisation in FP32
- :mod:`.fidelity` -- cosine, top-1 agreement, top-10 overlap and latency against fp32
- :mod:`.options` -- :class:`~.options.CalibrationOptions`: every setting of the job, its default and help
- :mod:`.yardstick` -- what every stage is measured against (held-out set, gallery, fp32 reference, objective)
- :mod:`.quantisers` -- the int8 quantisers (ours, NNCF's) as a table; :mod:`.recipes` -- the default recipes
- :mod:`.stages` -- the fp16, int8 and bf16 stages
- :mod:`.job` -- the calibrate job: adds graphs, reports and the recipe to a bundle atomically
- :mod:`.engines` -- strongly typed TensorRT engines (GPU box)

Uses onnx, onnxruntime.quantization and numpy; never torch.
"""

from dcssa.runtime import compat as _compat

#: import paths of the 0.1 layout (deprecated, removed in 0.3)
MOVED = {
    "dcssa.calibration.bundle": ("dcssa.calibration.job",),
    "dcssa.calibration.cli": ("dcssa.calibration.commands",),
}
_compat.install(MOVED)

"""Write one module to an ONNX file the runtime's onnxruntime can read, and check it."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch

from dcssa.runtime.contract import manifest as mf


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    name: str,
    dynamic_axes: dict[str, dict[int, str]],
    spec: mf.GraphSpec | None = None,
) -> None:
    """Export with the TorchScript exporter, pin the IR version, run onnx's checker, save.

    The TorchScript exporter (``dynamo=False``) is used on purpose: it maps Inception-v3 and the
    explicit attention to plain core operators with fully dynamic batch/spatial axes in ~2 s,
    where the dynamo exporter needs per-axis range guesses.
    """
    spec = spec or mf.graph_spec(name)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer chatter about constant shapes
        torch.onnx.export(
            module.eval(),
            args,
            buf,
            dynamo=False,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_axes=dynamic_axes,
            opset_version=mf.OPSET,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = mf.IR_VERSION
    model.producer_name = "dcssa-export"
    model.doc_string = f"{name} ({spec.output_names[0]} of {', '.join(spec.input_names)})"
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())

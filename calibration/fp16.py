"""FP16 graphs for GPU backends, with the numerically fragile parts kept in FP32.

TensorRT builds strongly typed networks from the ONNX types, so the precision of every layer is
decided here, in the graph. Kept in FP32 (with Casts at the boundaries):

* LayerNormalization -- FP16 LayerNorm after attention overflows in TensorRT;
* the attention score path (DC-SSA's and every ViT block's) -- the 1/sqrt(d) scaling, q.k^T
  (overflows in FP16), Softmax and attention.v, so probabilities never round-trip through FP16;
* pooling and L2 normalisation at the end (ReduceMean, ReduceL2, Clip, Expand, Div) -- a sum of
  2048 squares overflows FP16's 65504.

Everything else (the Inception trunk, the q/k/v/out projections, the residual) runs in FP16; graph
inputs and outputs stay float32 so the runtime feeds fp16 and fp32 graphs alike. The conversion
itself is a small typed pass over the graph (:func:`to_fp16`): every tensor keeps the precision of
the node that makes it, and Casts appear only where the precision changes.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from dcssa.calibration.int8 import fix_ir_version, node_block
from dcssa.runtime.errors import DcssaError

FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "Clip", "Expand", "Div")
FP32_BLOCKS = ("attention.scores", "vit.scores")  # DC-SSA's and the ViT's score paths


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes of an fp32 graph that the FP16 conversion keeps in FP32 (by op type and by block)."""
    return [n.name for n in model.graph.node if n.op_type in FP32_OPS or node_block(n.name) in FP32_BLOCKS]


def _materialise_identities(model: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` by a copy of the initializer under the output name.

    The TorchScript exporter deduplicates equal tensors (all-zero biases, say) into one initializer
    plus Identity nodes; if one consumer is kept in FP32 and another converted, the shared tensor
    cannot have both types, so each consumer gets its own copy.
    """
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Float ``Constant`` nodes become initializers, so each consumer can get its own precision."""
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.t.data_type == TensorProto.FLOAT:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    out = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    for vi in [*g.value_info, *g.input, *g.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            out.add(vi.name)
    return out


def _node_precisions(g: onnx.GraphProto, floats: set[str], keep_fp32: set[str]) -> tuple[dict, dict]:
    """(node -> precision, tensor -> precision it is produced in); graph inputs are FP32."""
    home: dict[str, str] = {i.name: "fp32" for i in g.input}
    precision = {}
    for node in g.node:
        touches = any(x in floats for x in [*node.input, *node.output])
        precision[node.name] = "fp32" if (node.name in keep_fp32 or not touches) else "fp16"
        for o in node.output:
            home[o] = precision[node.name]
    return precision, home


def _retype_initializers(g: onnx.GraphProto, floats: set[str], precision: dict, home: dict) -> dict[str, str]:
    """Initializers read only by FP16 nodes become FP16 in place; shared ones stay FP32 and get an
    FP16 copy. Returns {initializer: its FP16 copy}."""
    import numpy as np

    inits = {t.name: t for t in g.initializer}
    readers: dict[str, set[str]] = {}
    for node in g.node:
        for x in node.input:
            if x in inits and x in floats:
                readers.setdefault(x, set()).add(precision[node.name])
    fp16_copy: dict[str, str] = {}
    for name, used in readers.items():
        t = inits[name]
        half = np.clip(numpy_helper.to_array(t), -65504, 65504).astype(np.float16)
        if used == {"fp16"}:
            t.CopyFrom(numpy_helper.from_array(half, name))
            home[name] = "fp16"
        else:
            home[name] = "fp32"
            if "fp16" in used:
                fp16_copy[name] = f"{name}__fp16"
                g.initializer.append(numpy_helper.from_array(half, fp16_copy[name]))
    return fp16_copy


def _retype_attributes(node: onnx.NodeProto) -> None:
    """An FP16 node's float Cast target and ConstantOfShape value become FP16."""
    import numpy as np

    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        if a.name == "value" and a.t.data_type == TensorProto.FLOAT:  # ConstantOfShape
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))


def _cast_outputs_to_fp32(g: onnx.GraphProto, nodes: list, floats: set[str], home: dict) -> None:
    """Graph outputs produced in FP16 are renamed inside and cast back to float32 under their name."""
    for out in g.output:
        if out.name in floats and home.get(out.name) == "fp16":
            inner = f"{out.name}__fp16"
            for node in nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if x == out.name else x for x in node.input]
            nodes.append(onnx.helper.make_node("Cast", [inner], [out.name], name=f"{out.name}__cast_fp32",
                                               to=TensorProto.FLOAT))


def to_fp16(model: onnx.ModelProto, keep_fp32: set[str]) -> onnx.ModelProto:
    """Retype ``model`` to FP16 except the nodes in ``keep_fp32``; graph I/O stays float32.

    Every float tensor lives in the precision of the node that produces it; a consumer of the other
    precision reads it through one Cast (shared by all such consumers), so runs of FP32 nodes (the
    attention scores, the final normalisation) stay FP32 end to end without round trips. Weights are
    stored once per precision that uses them.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _materialise_identities(model)
    _constants_to_initializers(model)
    g = model.graph
    floats = _float_tensors(model)
    precision, home = _node_precisions(g, floats, keep_fp32)
    fp16_copy = _retype_initializers(g, floats, precision, home)
    casts: dict[tuple[str, str], str] = {}
    nodes = []

    def cast(tensor: str, to: str) -> str:
        key = (tensor, to)
        if key not in casts:
            casts[key] = f"{tensor}__to_{to}"
            elem = TensorProto.FLOAT16 if to == "fp16" else TensorProto.FLOAT
            nodes.append(onnx.helper.make_node("Cast", [tensor], [casts[key]], name=f"{tensor}__cast_{to}", to=elem))
        return casts[key]

    for node in g.node:
        want = precision[node.name]
        for i, x in enumerate(node.input):
            if x not in floats:
                continue
            if x in fp16_copy and want == "fp16":
                node.input[i] = fp16_copy[x]
            elif home.get(x, want) != want:
                node.input[i] = cast(x, want)
        if want == "fp16":
            _retype_attributes(node)
        nodes.append(node)
    _cast_outputs_to_fp32(g, nodes, floats, home)
    del g.node[:]
    g.node.extend(_toposort(nodes, {*(i.name for i in g.input), *(t.name for t in g.initializer)}))
    del g.value_info[:]
    return model


def _toposort(nodes: list, available: set[str]) -> list:
    """Order nodes so every input is produced before use (inserted Casts sit after their source)."""
    have = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(x in have for x in n.input):
                ordered.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise DcssaError(f"FP16 conversion left a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    return ordered


def convert_fp16(fp32_path: Path, out_path: Path) -> dict:
    """Write the FP16 version of ``fp32_path``; returns which nodes stayed FP32."""
    model = onnx.load(str(fp32_path))
    keep = set(fp32_node_names(model))
    m16 = fix_ir_version(to_fp16(model, keep))
    m16.producer_name = "dcssa-calibrate"
    m16.doc_string = f"{model.doc_string} fp16 (fp32 kept: {', '.join(FP32_OPS)}, attention scores)"
    onnx.checker.check_model(m16, full_check=True)
    out_path.write_bytes(m16.SerializeToString())
    return {"fp32_nodes": sorted(node_precisions(m16)["fp32"]), "fp32_ops": list(FP32_OPS),
            "fp32_blocks": list(FP32_BLOCKS)}


_FLOATS = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}


def node_precisions(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Compute nodes grouped by the float type of their first float output (Casts left out).

    Read from the graph's own types after ONNX shape inference: what TensorRT's strongly typed
    network will see.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    for t in inferred.graph.initializer:
        types[t.name] = t.data_type
    out: dict[str, list[str]] = {"fp32": [], "fp16": []}
    for n in inferred.graph.node:
        if n.op_type in ("Cast", "Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Slice") and not any(
            types.get(o) in _FLOATS for o in n.output
        ):
            continue
        if n.op_type == "Cast":
            continue
        for o in n.output:
            if types.get(o) in _FLOATS:
                out[_FLOATS[types[o]]].append(n.name)
                break
    return out

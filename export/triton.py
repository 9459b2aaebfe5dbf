"""``dcssa-export triton BUNDLE --out REPO``: a Triton Inference Server model repository from a bundle.

One model per graph Triton should serve (a heavy encoder without per-session state, read from the
manifest's graph specs: :func:`dcssa.runtime.backends.triton.remote_graph`), laid out as Triton
reads a repository::

    REPO/<prefix><graph>/config.pbtxt
    REPO/<prefix><graph>/1/model.onnx      (--platform onnxruntime: the bundle's graph file)
    REPO/<prefix><graph>/1/model.plan      (--platform tensorrt: the engine `dcssa-export engines` built)

Names, dims and the batch dimension come from the graph's spec in the manifest; each config records
the manifest's sha256, the graph, its file's sha256 and the precision in ``parameters``, which
``--backend triton`` checks before it sends a request. Torch-free; the folder is written atomically.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dcssa.runtime.atomic import staged_dir
from dcssa.runtime.backends.tensorrt import find_engine, rebuild_hint
from dcssa.runtime.backends.triton import (
    PARAM_FAMILY,
    PARAM_GRAPH,
    PARAM_GRAPH_SHA,
    PARAM_MANIFEST,
    PARAM_PRECISION,
    PARAM_TENSORRT,
    PARAM_VERSION_COMPATIBLE,
    TRITON_DTYPE,
    batch_dim,
    manifest_sha256,
    remote_graph,
)
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle
from dcssa.runtime.errors import BundleError, DcssaError

#: --platform -> (Triton platform, model file name in the version folder)
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}


def preferred_sizes(max_batch: int) -> list[int]:
    """Powers of two from 2 up to ``max_batch``, and ``max_batch`` itself."""
    sizes, b = [], 2
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch] if max_batch > 1 else []


def _dims(dims: list, batched: bool) -> list[int]:
    """Triton dims of a spec's dims: the batch dim dropped when batched, symbolic dims as -1."""
    return [d if isinstance(d, int) else -1 for d in (dims[1:] if batched else dims)]


def _tensors(kind: str, tensors: dict[str, list], batched: bool) -> str:
    rows = [f'  {{ name: "{name}" data_type: TYPE_{TRITON_DTYPE} dims: [ {", ".join(map(str, _dims(dims, batched)))} ] }}'
            for name, dims in tensors.items()]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def model_config(model: str, spec: mf.GraphSpec, *, platform: str, max_batch: int, instances: int, kind: str,
                 queue_delay_us: int, params: dict[str, str]) -> str:
    """config.pbtxt text of one stateless model (Triton's ModelConfig in protobuf text format)."""
    batched = batch_dim(spec) and max_batch > 0
    text = f'name: "{model}"\nplatform: "{PLATFORMS[platform][0]}"\nmax_batch_size: {max_batch if batched else 0}\n'
    text += _tensors("input", spec.inputs, batched) + _tensors("output", spec.outputs, batched)
    if batched:
        sizes = ", ".join(map(str, preferred_sizes(max_batch)))
        text += (f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
                 f"  max_queue_delay_microseconds: {queue_delay_us}\n}}\n")
    text += f"instance_group [ {{ count: {instances} kind: {KINDS[kind]} }} ]\n"
    for key, value in params.items():
        text += f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
    return text


def _source(bundle: Bundle, name: str, precision: str, platform: str) -> tuple[Path, dict]:
    """The file that goes into the version folder, and the engine record (tensorrt) or {}."""
    entry = bundle.graph_entry(name, precision)  # raises naming the precisions present
    if platform == "onnxruntime":
        return bundle.verified_file(entry["file"]), {}
    found = find_engine(bundle.manifest, entry["file"])
    if found is None:
        raise BundleError(f"no TensorRT engine was built from {entry['file']}: --platform tensorrt needs one",
                          path=bundle.path, hint=rebuild_hint(bundle.path, precision))
    _graph, _prec, record = found
    return bundle.verified_file(record["file"]), bundle.manifest["engines"]


def plan_params(engines: dict) -> dict[str, str]:
    """What a tensorrt_plan model records of its plan: the TensorRT that built it, version-compatible or not
    (``--backend triton`` checks them; a server on another TensorRT refuses a plan that is not)."""
    if not engines:
        return {}
    return {PARAM_TENSORRT: str(engines.get("tensorrt")),
            PARAM_VERSION_COMPATIBLE: "true" if engines.get("version_compatible") else "false"}


def write_repository(bundle_path: str | Path, out: str | Path, *, platform: str = "onnxruntime",
                     precision: str = "fp32", max_batch: int = 8, instances: int = 1, kind: str = "gpu",
                     queue_delay_us: int = 100, prefix: str = "", force: bool = False) -> dict:
    """Write the repository at ``out`` (all or nothing); returns {model: {graph, file, config}}."""
    if platform not in PLATFORMS:
        raise DcssaError(f"unknown platform {platform!r}", hint=f"use one of {', '.join(PLATFORMS)}")
    if max_batch < 0 or instances < 1 or queue_delay_us < 0:
        raise DcssaError("--max-batch >= 0, --instances >= 1 and --queue-delay-us >= 0, please")
    bundle = Bundle.load(bundle_path)
    sha = manifest_sha256(bundle)
    names = [n for n in bundle.manifest["graphs"] if remote_graph(bundle.graph_spec(n))]
    if not names:
        raise BundleError("the bundle has no stateless encoder graph to serve", path=bundle.path / mf.MANIFEST)
    sources = {n: _source(bundle, n, precision, platform) for n in names}  # every error before writing
    for name, (_, engines) in sources.items():
        built = engines.get("max_batch")
        if engines and built is not None and max_batch > int(built):
            raise DcssaError(f"the TensorRT engine of {name} takes batches up to {built}, not --max-batch {max_batch}",
                             path=bundle.path, hint=f"pass --max-batch {built}, or rebuild the engines with "
                             f"`dcssa-export engines {bundle.path} --precision {precision} --max-batch {max_batch}`")
    models = {}
    with staged_dir(out, force=force) as tmp:
        for name in names:
            src, _ = sources[name]
            model = prefix + name
            spec = bundle.graph_spec(name, precision)
            (tmp / model / "1").mkdir(parents=True)
            shutil.copyfile(src, tmp / model / "1" / PLATFORMS[platform][1])
            params = {PARAM_MANIFEST: sha, PARAM_GRAPH: name, PARAM_PRECISION: precision,
                      PARAM_GRAPH_SHA: bundle.file_sha256(bundle.graph_entry(name, precision)["file"]),
                      PARAM_FAMILY: bundle.family, **plan_params(sources[name][1])}
            text = model_config(model, spec, platform=platform, max_batch=max_batch, instances=instances, kind=kind,
                                queue_delay_us=queue_delay_us, params=params)
            (tmp / model / "config.pbtxt").write_text(text)
            models[model] = {"graph": name, "file": f"{model}/1/{PLATFORMS[platform][1]}",
                             "config": f"{model}/config.pbtxt"}
    doc = {"path": str(out), "bundle": str(bundle.path), "manifest_sha256": sha, "platform": platform,
           "precision": precision, "models": models}
    engines = next((e for _, e in sources.values() if e), {})
    if engines:
        doc["tensorrt"] = engines.get("tensorrt")
        doc["serve"] = ("tritonserver --model-repository REPO"
                        + (" --backend-config=tensorrt,version-compatible=true" if engines.get("version_compatible")
                           else f"  (a server with TensorRT {engines.get('tensorrt')} exactly: the plans are not "
                                "version-compatible)"))
    return doc

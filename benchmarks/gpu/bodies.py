"""What each gpu-check stage does, and :data:`STAGES`: the stages, most valuable first.

Setup stages (bundle, graphs, engines) run the project's own commands in child processes (their
output goes to ``OUT/gpu-check.log``; their time-out is what is left of the budget); measuring
stages call :mod:`.measure` and :mod:`.torch_cuda` in this process. A stage returns a dict for the
report (``summary`` is its one line in the Markdown; ``judged_as`` makes :mod:`.verdict` judge it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dcssa.benchmarks.gpu import measure
from dcssa.benchmarks.gpu.stages import Context, Stage

SERVING = "serving"  # the per-stroke graphs: sketch encoder and stroke head
GRAPHS = "tensorrt-cuda-graphs"  # the tensorrt backend with CUDA-graph replay (gpu_check.default_backend)


class StepFailed(RuntimeError):
    """A child command of a stage exited non-zero (its output is in the log)."""


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run_cmd(ctx: Context, cmd: list[str]) -> None:
    """One project command, output appended to the log, killed when the budget is spent."""
    ctx.log.parent.mkdir(parents=True, exist_ok=True)
    with ctx.log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, ctx.remaining()))
        except subprocess.TimeoutExpired:
            raise StepFailed(f"out of budget while running {Path(cmd[0]).name} {cmd[1]}") from None
    if proc.returncode:
        raise StepFailed(f"exit {proc.returncode} from `{' '.join(cmd)}` (see {ctx.log})")


def paths(ctx: Context) -> tuple[Path, Path, Path]:
    """(bundle, gallery, dataset folder) as the bundle stage left them."""
    work = ctx.out / "work"
    return ctx.bundle, ctx.bundle / "gallery", work / "data"


def _manifest(ctx: Context) -> dict:
    return json.loads((ctx.bundle / "manifest.json").read_text())


def bundle_stage(ctx: Context) -> dict:
    """The bundle, its gallery and a dataset, made from the demo checkpoint where missing."""
    bundle, gallery, data = paths(ctx)
    work, made = ctx.out / "work", []
    if not (bundle / "manifest.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        run_cmd(ctx, [_bin("dcssa-export"), "demo-checkpoint", str(work / "demo.pth")])
        run_cmd(ctx, [_bin("dcssa-export"), "--ckpt", str(work / "demo.pth"), "--out", str(bundle), "--force"])
        made.append("bundle")
    if not (data / "Shapes").is_dir():
        run_cmd(ctx, [_bin("dcssa-rt"), "make-dataset", str(data), "--photos", "40", "--seed", "0", "--force"])
        made.append("dataset")
    if not gallery.is_dir():
        run_cmd(ctx, [_bin("dcssa-rt"), "index", str(data / "Shapes" / "photo"), "--bundle", str(bundle),
                      "--force", "--backend", "ort-cpu"])
        made.append("gallery")
    return {"bundle": str(bundle), "gallery": str(gallery), "data": str(data), "made": made,
            "summary": f"made {', '.join(made)}" if made else "bundle, gallery and dataset were there"}


def graphs_stage(precision: str):
    def run(ctx: Context) -> dict:
        have = _manifest(ctx)["graphs"]["sketch_encoder"]
        if precision in have:
            return {"summary": f"the bundle has {precision} graphs already"}
        _, _, data = paths(ctx)
        run_cmd(ctx, [_bin("dcssa-export"), "calibrate", str(ctx.bundle), "--data", str(data / "Shapes"),
                      "--precision", precision, "--recipe", "default"])
        return {"summary": f"{precision} graphs added (calibrate --recipe default)"}
    return run


def serving_graphs(ctx: Context) -> list[str]:
    """The graphs a stroke runs: the sketch encoder and the graph after it (head step, projection; none for ARNet)."""
    from dcssa.runtime.contract import manifest as mf

    head = mf.head_graph(_manifest(ctx)["graphs"])
    return [mf.SKETCH_ENCODER] + ([head] if head else [])


def engines_stage(precision: str, graphs: str = SERVING):
    def run(ctx: Context) -> dict:
        names = serving_graphs(ctx) if graphs == SERVING else [graphs]
        cmd = [_bin("dcssa-export"), "engines", str(ctx.bundle), "--precision", precision, "--graphs", ",".join(names),
               "--max-batch", str(ctx.options.max_batch), "--verbose"]
        if ctx.options.version_compatible:
            cmd.append("--version-compatible")
        run_cmd(ctx, cmd)
        engines = _manifest(ctx)["engines"]
        built = {g: per[precision]["file"] for g, per in engines["graphs"].items() if g in names and precision in per}
        return {"engines": built, "tensorrt": engines.get("tensorrt"), "gpu": engines.get("gpu"),
                "summary": f"{len(built)} {precision} engines ({', '.join(built)}), TensorRT {engines.get('tensorrt')}"}
    return run


def parity_stage(backend: str, precision: str):
    def run(ctx: Context) -> dict:
        bundle, gallery, _ = paths(ctx)
        return {**measure.parity(bundle, gallery, ctx.backend(backend), precision), "judged_as": precision}
    return run


def task_stage(backend: str, precision: str):
    """The task yardstick of the precision work: ``dcssa-rt eval`` on the dataset's held-out sketches,
    ``backend`` at ``precision`` against onnxruntime CPU fp32; m@B / acc@10 drops (paired bootstrap
    upper bounds, as ``calibrate`` judges plans) for the verdict."""
    def run(ctx: Context) -> dict:
        bundle, _, data = paths(ctx)
        out = ctx.out / "work" / f"eval-{backend}-{precision}"
        run_cmd(ctx, [_bin("dcssa-rt"), "eval", "--dataset", str(data / "Shapes"), "--bundle", str(bundle),
                      "--compare", f"ort-cpu:fp32,{backend}:{precision}", "--out", str(out), "--force"])
        doc = json.loads((out / "eval.json").read_text())
        changed = [r for r in doc["runs"] if r.get("task_change")]
        if not changed:
            raise StepFailed(f"{out / 'eval.json'} has no task change against fp32")
        metrics = changed[0]["task_change"]["metrics"]
        drops = {m: {k: metrics[m][k] for k in ("drop", "drop_upper")} for m in ("m@B", "acc@10")}
        return {"task_drops": drops, "sketches": doc["dataset"]["sketches"], "report": str(out / "eval.md"),
                "judged_task": True, "summary": f"{backend} {precision}: m@B drop {drops['m@B']['drop_upper']:+.4f}, "
                f"acc@10 drop {drops['acc@10']['drop_upper']:+.4f} (upper bounds) on held-out sketches"}
    return run


def latency_stage(backend: str, precision: str):
    def run(ctx: Context) -> dict:
        bundle, gallery, _ = paths(ctx)
        return measure.latency(bundle, gallery, ctx.backend(backend), precision)
    return run


def pick_stage(ctx: Context) -> dict:
    return measure.encoder_times(ctx.bundle, ctx.backend("tensorrt"), ("fp16", "int8"))


def cuda_graphs_stage(ctx: Context) -> dict:
    """The fp16 sketch encoder with and without CUDA-graph replay, side by side, and per stroke with it
    (the runtime keeps graphs off until this says they pay)."""
    bundle, gallery, _ = paths(ctx)
    plain = measure.encoder_times(bundle, ctx.backend("tensorrt"), ("fp16",))["fp16"]
    graphs = measure.encoder_times(bundle, ctx.backend(GRAPHS), ("fp16",))["fp16"]
    stroke = measure.latency(bundle, gallery, ctx.backend(GRAPHS), "fp16")
    return {"encoder_ms": {"plain": plain["median_ms"], "cuda_graphs": graphs["median_ms"]},
            "per_stroke_with_graphs": stroke["median_ms"], "load": stroke["load"],
            "summary": f"sketch encoder fp16: {plain['median_ms']} ms plain, {graphs['median_ms']} ms as a CUDA graph"}


def threads_stage(ctx: Context) -> dict:
    bundle, gallery, _ = paths(ctx)
    return measure.two_threads(bundle, gallery, ctx.backend("tensorrt"), "fp16")


def growth_stage(ctx: Context) -> dict:
    bundle, gallery, _ = paths(ctx)
    return measure.ort_trt_growth(bundle, gallery, ctx.backend("ort-trt"), ctx.out / "ort-trt-cache")


def _checkpoint(ctx: Context):
    from dcssa.benchmarks.run import find_source_checkpoint
    from dcssa.runtime import Bundle

    ckpt = find_source_checkpoint(Bundle.load(ctx.bundle), [ctx.bundle.parent, ctx.bundle, ctx.out / "work"])
    if not ckpt:
        raise FileNotFoundError(f"the checkpoint {ctx.bundle} was exported from is not beside it: copy it there "
                                "(the manifest's source.checkpoints names it) to get the PyTorch peers")
    return ckpt


def torch_stage(quick: bool):
    def run(ctx: Context) -> dict:
        from dcssa.benchmarks.gpu.torch_cuda import cuda_peers

        bundle, gallery, _ = paths(ctx)
        return cuda_peers(bundle, gallery, _checkpoint(ctx), quick=quick)
    return run


def photo_stage(ctx: Context) -> dict:
    """The photo encoder's engine indexes the catalogue (photos of several aspect ratios); its
    embeddings against the ort-cpu gallery's, photo by photo."""
    import numpy as np

    from dcssa.runtime import Bundle, Gallery

    bundle, gallery, data = paths(ctx)
    out = ctx.out / "work" / "gallery-tensorrt"
    run_cmd(ctx, [_bin("dcssa-rt"), "index", str(data / "Shapes" / "photo"), "--bundle", str(bundle), "--out",
                  str(out), "--force", "--backend", "tensorrt", "--precision", "fp16"])
    b = Bundle.load(bundle)
    ref, got = Gallery.load(gallery, b), Gallery.load(out, b)
    order = {pid: i for i, pid in enumerate(got.ids)}
    cos = [float(np.dot(ref.embeddings[i], got.embeddings[order[pid]])) for i, pid in enumerate(ref.ids)]
    return {"photos": len(cos), "cosine_min": min(cos), "cosine_mean": float(np.mean(cos)),
            "summary": f"photo encoder fp16: cosine min {min(cos):.5f} over {len(cos)} photos"}


def polygraphy_stage(ctx: Context) -> dict:
    """NVIDIA's own comparison as a second opinion: ``polygraphy run`` of the fp16 sketch encoder,
    TensorRT (strongly typed) against onnxruntime, on its own random input."""
    entry = _manifest(ctx)["graphs"]["sketch_encoder"]["fp16"]
    cmd = [_bin("polygraphy"), "run", str(ctx.bundle / entry["file"]), "--trt", "--strongly-typed", "--onnxrt",
           "--input-shapes", "images:[1,3,299,299]", "--atol", "5e-3", "--rtol", "5e-3"]
    run_cmd(ctx, cmd)
    return {"command": " ".join(cmd), "summary": "polygraphy run: TensorRT fp16 matches onnxruntime (see the log)"}


def bench_stage(ctx: Context) -> dict:
    bundle, gallery, _ = paths(ctx)
    backends = ["--backend", "tensorrt"] + (["--backend", "ort-trt"] if "ort-trt" in ctx.caps else [])
    run_cmd(ctx, [_bin("dcssa-bench"), "run", "--bundle", str(bundle), "--gallery", str(gallery), "--out",
                  str(ctx.out / "bench"), *backends, "--repeats", "2", "--search-sizes", "", "--peers", "eager",
                  "--force"])
    return {"report": str(ctx.out / "bench" / "bench.json"), "summary": "dcssa-bench run: see bench/"}


TRT, ORT_TRT, TORCH = frozenset({"tensorrt", "bundle"}), frozenset({"ort-trt", "bundle"}), frozenset({"torch-cuda", "bundle"})

#: every stage, most valuable first. estimate_s: ESTIMATES for an H100-class box (never measured)
STAGES: tuple[Stage, ...] = (
    Stage("bundle", "bundle, gallery and dataset (demo checkpoint when missing)", bundle_stage,
          frozenset({"bundle", "ort-cpu"}), estimate_s=90, quick=True),
    Stage("graphs-fp16", "fp16 graphs of the bundle (calibrate)", graphs_stage("fp16"), frozenset({"ort-cpu"}),
          ("bundle",), 45, quick=True),
    Stage("engines-fp16", "fp16 TensorRT engines of the sketch encoder and head (serving profile)",
          engines_stage("fp16"), TRT, ("graphs-fp16",), 60, quick=True),
    Stage("parity-fp16", "fp16 engines against onnxruntime CPU fp32, every stroke prefix",
          parity_stage("tensorrt", "fp16"), TRT, ("engines-fp16",), 15, quick=True),
    Stage("latency-fp16", "per-stroke latency of the runtime on the fp16 engines", latency_stage("tensorrt", "fp16"),
          TRT, ("engines-fp16",), 15, quick=True),
    Stage("task-fp16", "the task yardstick: m@B / acc@10 of the fp16 engines against fp32 on held-out sketches",
          task_stage("tensorrt", "fp16"), TRT, ("engines-fp16",), 30),
    Stage("cuda-graphs", "the fp16 sketch encoder replayed as a CUDA graph against plain launches",
          cuda_graphs_stage, TRT, ("engines-fp16",), 20),
    Stage("torch-cuda", "PyTorch on the same GPU: eager fp32, autocast fp16/bf16", torch_stage(True), TORCH,
          ("bundle",), 40, quick=True),
    Stage("ort-trt-fp16", "onnxruntime's TensorRT provider on the fp16 graphs, outputs checked",
          parity_stage("ort-trt", "fp16"), ORT_TRT, ("graphs-fp16",), 90),
    Stage("torch-cuda-graphs", "PyTorch peers with torch.compile (CUDA graphs)", torch_stage(False), TORCH,
          ("bundle",), 150),
    Stage("graphs-int8", "int8 graphs of the bundle (calibrate --recipe default)", graphs_stage("int8"),
          frozenset({"ort-cpu"}), ("bundle",), 90),
    Stage("engines-int8", "int8 TensorRT engines of the sketch encoder and head", engines_stage("int8"), TRT,
          ("graphs-int8",), 90),
    Stage("parity-int8", "int8 engines against onnxruntime CPU fp32", parity_stage("tensorrt", "int8"), TRT,
          ("engines-int8",), 15),
    Stage("latency-int8", "per-stroke latency on the int8 engines", latency_stage("tensorrt", "int8"), TRT,
          ("engines-int8",), 15),
    Stage("task-int8", "the task yardstick on the int8 engines", task_stage("tensorrt", "int8"), TRT,
          ("engines-int8",), 30),
    Stage("int8-vs-fp16", "sketch-encoder call, int8 engine against fp16, side by side", pick_stage, TRT,
          ("engines-int8", "engines-fp16"), 10),
    Stage("engines-fp32", "fp32 engines of the sketch encoder and head", engines_stage("fp32"), TRT, ("bundle",), 60),
    Stage("parity-fp32", "fp32 engines against onnxruntime CPU fp32", parity_stage("tensorrt", "fp32"), TRT,
          ("engines-fp32",), 15),
    Stage("ort-trt-int8", "onnxruntime's TensorRT provider on the int8 graphs, outputs checked",
          parity_stage("ort-trt", "int8"), ORT_TRT, ("graphs-int8",), 90),
    Stage("two-threads", "two sessions on two threads sharing one TensorRT retriever", threads_stage, TRT,
          ("engines-fp16",), 15),
    Stage("ort-trt-growth", "ort-trt over a growing K/V cache: engine rebuilds", growth_stage, ORT_TRT,
          ("bundle",), 60),
    Stage("engines-photo", "fp16 engine of the photo encoder", engines_stage("fp16", "photo_encoder"), TRT,
          ("graphs-fp16",), 120),
    Stage("photo-parity", "the catalogue indexed on the photo engine against ort-cpu", photo_stage, TRT,
          ("engines-photo",), 30),
    Stage("polygraphy", "polygraphy run --trt --onnxrt on the fp16 sketch encoder (second opinion)",
          polygraphy_stage, frozenset({"tensorrt", "polygraphy"}), ("graphs-fp16",), 60),
    Stage("bench", "dcssa-bench run on the GPU backends", bench_stage, TRT, ("engines-fp16",), 240),
)

"""`dcssa-bench gpu-check` without a GPU: the real no-GPU stop, and stand-ins for the machines users have.

* this machine: stops at once, exit 2, a report naming what is missing, nothing heavy imported;
* a torch-only CUDA box and a TensorRT box (probes as those machines report them, stage bodies that
  record what ran and what the report held when they started): the right stages, in value order,
  inside the budget, the report rewritten after each, a failing stage leaving the others' results;
* the verdict on a stand-in engine (onnxruntime CPU on a tiny bundle, its sketch features perturbed):
  the REAL parity stage measures it against onnxruntime CPU fp32 and exits 1 when it is off, 0 when not.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tiny_bundle import write_tiny_bundle, write_tiny_gallery

from dcssa.benchmarks import gpu_check
from dcssa.benchmarks.gpu import bodies
from dcssa.benchmarks.gpu.probe import Driver, Probe, cuda_driver
from dcssa.benchmarks.gpu.report import JSON_NAME, MD_NAME
from dcssa.benchmarks.gpu.verdict import THRESHOLDS
from dcssa.runtime.backends.ort import OrtBackend

NO_GPU = cuda_driver().error is not None


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU: the no-GPU path cannot be observed")
def test_without_a_gpu_it_stops_at_once_with_a_report_naming_what_is_missing(tmp_path):
    out = tmp_path / "report"
    code = (  # `dcssa-bench gpu-check`: the command line loads every harness module, none of them heavy
        "import sys\n"
        "from dcssa.benchmarks.cli import main\n"
        "try:\n"
        f"    main(['gpu-check', '--bundle', {str(tmp_path / 'none')!r}, '--out', {str(out)!r}])\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'tensorrt', 'dcssa.export', 'dcssa.calibration') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == gpu_check.NO_GPU_EXIT == 2, proc.stderr
    assert "no usable NVIDIA GPU here, nothing was run" in proc.stderr and "libcuda" in proc.stderr
    assert "heavy: []" in proc.stdout  # stopped before exporting, calibrating or importing torch
    assert not (tmp_path / "none").exists()
    report = json.loads((out / JSON_NAME).read_text())
    assert report["complete"] and report["stages"] == {} and report["verdict"]["exit"] == 2
    assert "gpu" in report["machine"]["missing"] and "libcuda" in report["machine"]["missing"]["gpu"]
    assert "gpu" not in report["machine"]["capabilities"]
    assert "no GPU" in (out / MD_NAME).read_text()


def _box(*packages: str, bundle_ready: bool = True) -> Probe:
    return Probe(Driver(version="12.6", devices=1), {p: "1.0" for p in packages}, bundle_ready=bundle_ready)


class Recorder:
    """Stage bodies that record the order they ran in and what the report held when they started."""

    def __init__(self, out, clock, fail: str | None = None) -> None:
        self.out, self.clock, self.fail = out, clock, fail
        self.ran: list[str] = []
        self.seen: dict[str, list[str]] = {}

    def stages(self):
        return tuple(dataclasses.replace(s, run=self.body(s)) for s in bodies.STAGES)

    def body(self, stage):
        def run(ctx):
            self.ran.append(stage.name)
            self.seen[stage.name] = list(json.loads((self.out / JSON_NAME).read_text())["stages"])
            self.clock.now += stage.estimate_s  # the stage takes what its estimate says
            if stage.name == self.fail:
                raise RuntimeError("made to fail")
            return {"summary": f"{stage.name} ran"}
        return run


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(tmp_path, box: Probe, *, budget: float = 10_000, quick: bool = False, fail: str | None = None):
    out, clock = tmp_path / "out", Clock()
    rec = Recorder(out, clock, fail)
    options = gpu_check.GpuCheckOptions(bundle=tmp_path / "b", out=out, budget_s=budget, quick=quick)
    code = gpu_check.gpu_check(options, found=box, stages=rec.stages(), say=lambda s: None, clock=clock)
    return code, rec, json.loads((out / JSON_NAME).read_text())


def _expected(caps: set[str], quick: bool = False) -> list[str]:
    """Independent of plan(): the table's order, keeping a stage when the machine has what it needs."""
    return [s.name for s in bodies.STAGES if s.needs <= caps and (s.quick or not quick)]


def test_a_torch_only_cuda_box_runs_the_pytorch_stages_and_names_the_tensorrt_ones_it_skips(tmp_path):
    box = _box("torch", "onnx", "onnxruntime")
    code, rec, report = _run(tmp_path, box)
    assert rec.ran == _expected(box.capabilities())
    assert rec.ran == ["bundle", "graphs-fp16", "torch-cuda", "torch-cuda-graphs", "graphs-int8"]
    assert report["skipped"]["engines-fp16"] == "this machine lacks tensorrt"
    assert report["skipped"]["ort-trt-fp16"] == "this machine lacks ort-trt"
    for i, name in enumerate(rec.ran):  # the report was rewritten after every stage
        assert rec.seen[name] == rec.ran[:i]
    assert report["complete"] and code == 0


def test_a_tensorrt_box_runs_the_stages_in_value_order_inside_the_budget(tmp_path):
    box = _box("tensorrt", "cuda-python", "onnxruntime-gpu")  # an NGC TensorRT container: no torch
    budget = 300.0
    code, rec, report = _run(tmp_path, box, budget=budget)
    runnable = _expected(box.capabilities())
    assert runnable[:5] == ["bundle", "graphs-fp16", "engines-fp16", "parity-fp16", "latency-fp16"]
    # by hand: walk the table, spending each stage's estimate while it fits
    spent, fits = 0.0, []
    table = {s.name: s for s in bodies.STAGES}
    for name in runnable:
        if table[name].estimate_s <= budget - spent and set(table[name].after) <= set(fits):
            fits.append(name)
            spent += table[name].estimate_s
    assert rec.ran == fits and len(fits) < len(runnable)
    for name in set(runnable) - set(fits):
        why = report["skipped"][name]
        assert why.startswith("budget:") or (why.startswith("needs ") and why.endswith("which did not succeed"))
    assert any(why.startswith("budget:") for why in report["skipped"].values())
    assert "torch-cuda" in report["skipped"] and "lacks torch-cuda" in report["skipped"]["torch-cuda"]
    assert code == 0 and report["complete"]


def test_quick_runs_only_the_serving_stages(tmp_path):
    box = _box("tensorrt", "cuda-python", "torch", "onnx", "onnxruntime")
    _, rec, report = _run(tmp_path, box, quick=True)
    assert rec.ran == ["bundle", "graphs-fp16", "engines-fp16", "parity-fp16", "latency-fp16", "torch-cuda"]
    assert report["skipped"]["engines-int8"] == "--quick"


def test_a_failing_stage_leaves_the_others_results_and_fails_the_check(tmp_path):
    box = _box("tensorrt", "cuda-python", "onnxruntime")
    code, rec, report = _run(tmp_path, box, fail="engines-int8")
    assert report["stages"]["engines-int8"]["status"] == "failed"
    assert "made to fail" in report["stages"]["engines-int8"]["error"]
    for dependent in ("parity-int8", "latency-int8", "int8-vs-fp16"):
        assert dependent not in rec.ran and "engines-int8" in report["skipped"][dependent]
    assert {"parity-fp16", "latency-fp16", "engines-fp32", "parity-fp32"} <= set(rec.ran)  # later stages still ran
    assert all(report["stages"][n]["status"] == "ok" for n in rec.ran if n != "engines-int8")
    assert "made to fail" in (tmp_path / "out" / "gpu-check.log").read_text()  # the traceback is kept
    assert code == 1 and report["complete"] and not report["verdict"]["passed"]


# -- the verdict, on the real parity stage ------------------------------------------------------------


class OffEngine(OrtBackend):
    """A stand-in 'engine': onnxruntime CPU whose sketch features get noise of ``noise`` x their spread."""

    def __init__(self, noise: float) -> None:
        super().__init__("ort-cpu")
        self.noise = noise

    def load(self, path, spec=None, *, precision=None):
        runner = super().load(path, spec)
        if spec is None or spec.name != "sketch_encoder" or not self.noise:
            return runner
        clean, rng = runner._run_impl, np.random.default_rng(0)

        def noisy(feeds):
            return {k: v + (self.noise * v.std() * rng.standard_normal(v.shape)).astype(v.dtype)
                    for k, v in clean(feeds).items()}
        runner._run_impl = noisy
        return runner


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_tiny_bundle(tmp_path_factory.mktemp("gpu-check") / "bundle")
    manifest = json.loads((folder / "manifest.json").read_text())  # an "fp16" sketch encoder: the fp32 one's copy
    entry = manifest["graphs"]["sketch_encoder"]
    shutil.copyfile(folder / entry["fp32"]["file"], folder / "sketch_encoder.fp16.onnx")
    entry["fp16"] = {**entry["fp32"], "file": "sketch_encoder.fp16.onnx"}
    manifest["files"]["sketch_encoder.fp16.onnx"] = manifest["files"][entry["fp32"]["file"]]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    write_tiny_gallery(folder, folder / "gallery", photos=14)
    return folder


def _verdict_run(tmp_path, tiny, noise: float):
    done = {"summary": "stand-in: nothing to build"}
    table = {s.name: s for s in bodies.STAGES}
    stages = (dataclasses.replace(table["bundle"], run=lambda ctx: done),
              dataclasses.replace(table["graphs-fp16"], run=lambda ctx: done),
              dataclasses.replace(table["engines-fp16"], run=lambda ctx: done),
              table["parity-fp16"])  # the real one
    options = gpu_check.GpuCheckOptions(bundle=tiny, out=tmp_path / f"out-{noise}")
    code = gpu_check.gpu_check(options, found=_box("tensorrt", "cuda-python", "onnxruntime"), stages=stages,
                               backend=lambda name: OffEngine(noise), say=lambda s: None)
    return code, json.loads((options.out / JSON_NAME).read_text())


def test_the_verdict_exits_1_when_a_stand_in_engines_outputs_are_off(tmp_path, tiny):
    code, report = _verdict_run(tmp_path, tiny, noise=0.5)
    parity = report["stages"]["parity-fp16"]
    assert parity["status"] == "ok" and parity["queries"] == 4 * 16
    assert parity["cosine_min"] < THRESHOLDS["fp16"]["cosine_min"]
    assert code == 1 and not report["verdict"]["passed"]
    assert any(p.startswith("parity-fp16 (fp16): cosine_min") for p in report["verdict"]["problems"])
    assert "FAIL" in (tmp_path / "out-0.5" / MD_NAME).read_text()


def test_the_verdict_passes_an_engine_that_matches(tmp_path, tiny):
    code, report = _verdict_run(tmp_path, tiny, noise=0.0)
    parity = report["stages"]["parity-fp16"]
    assert parity["cosine_min"] > 0.99999 and parity["top10_overlap"] == 1.0
    assert code == 0 and report["verdict"]["passed"]


def test_the_task_yardstick_fails_a_drop_over_calibrates_limit():
    from dcssa.benchmarks.gpu.verdict import TASK_MAX_DROP, verdict

    ok = {"status": "ok", "judged_task": True,
          "task_drops": {"m@B": {"drop": 0.0, "drop_upper": 0.004}, "acc@10": {"drop": 0.0, "drop_upper": 0.02}}}
    bad = {"status": "ok", "judged_task": True,
           "task_drops": {"m@B": {"drop": 0.02, "drop_upper": 0.035}, "acc@10": {"drop": 0.0, "drop_upper": 0.0}}}
    assert TASK_MAX_DROP == {"m@B": 0.01, "acc@10": 0.02}  # calibrate's default --max-drop
    assert verdict({"task-fp16": ok})["passed"]
    result = verdict({"task-fp16": ok, "task-int8": bad})
    assert not result["passed"] and result["exit"] == 1
    assert result["problems"] == ["task-int8 (task): m@B drop (upper bound) 0.035 > 0.01"]


def test_the_task_stage_runs_dcssa_rt_eval_and_feeds_the_verdict(tmp_path, tiny):
    """The real stage on a real (tiny) bundle and dataset: onnxruntime CPU 'fp16' (the fp32 graph's copy)
    against fp32 loses nothing on the held-out sketches, so the verdict passes."""
    out = tmp_path / "out"
    subprocess.run([bodies._bin("dcssa-rt"), "make-dataset", str(out / "work" / "data"), "--photos", "8",
                    "--seed", "0", "--force"], check=True, capture_output=True, timeout=120)
    done = {"summary": "stand-in"}
    stages = (dataclasses.replace(bodies.STAGES[0], run=lambda ctx: done),
              dataclasses.replace(next(s for s in bodies.STAGES if s.name == "task-fp16"),
                                  run=bodies.task_stage("ort-cpu", "fp16"), after=("bundle",)))
    options = gpu_check.GpuCheckOptions(bundle=tiny, out=out)
    code = gpu_check.gpu_check(options, found=_box("tensorrt", "cuda-python", "onnxruntime"), stages=stages,
                               say=lambda s: None)
    report = json.loads((out / JSON_NAME).read_text())
    task = report["stages"]["task-fp16"]
    assert task["status"] == "ok", task
    assert task["task_drops"]["m@B"]["drop_upper"] == 0.0 and task["sketches"] > 0
    assert report["verdict"]["judged"]["task-fp16"]["misses"] == [] and code == 0


def test_stage_runs_only_the_named_stages_on_what_an_earlier_run_left(tmp_path):
    box = _box("tensorrt", "cuda-python", "onnxruntime")
    out, clock = tmp_path / "out", Clock()
    rec = Recorder(out, clock)
    options = gpu_check.GpuCheckOptions(bundle=tmp_path / "b", out=out, stages=("parity-int8", "latency-int8"))
    assert gpu_check.gpu_check(options, found=box, stages=rec.stages(), say=lambda s: None, clock=clock) == 0
    assert rec.ran == ["parity-int8", "latency-int8"]  # engines-int8 was not asked for: not waited on
    report = json.loads((out / JSON_NAME).read_text())
    assert report["skipped"]["engines-int8"] == "not asked for (--stage)"
    with pytest.raises(Exception, match="no stage nope"):
        gpu_check.gpu_check(dataclasses.replace(options, stages=("nope",)), found=box, say=lambda s: None)

"""``dcssa-bench gpu-check`` (``make gpu-check``): the GPU path's first contact with a GPU, in stages.

It reads the machine first (:mod:`dcssa.benchmarks.gpu.probe`: milliseconds, nothing heavy
imported). Without a usable NVIDIA GPU it writes a report naming what is missing and stops with
exit code 2. Otherwise it runs every stage this machine can run (TensorRT engines and their parity,
per-stroke latency, PyTorch on the same GPU, onnxruntime's TensorRT provider, ...), most valuable
first, inside ``--budget-s``, each isolated, rewriting ``OUT/gpu-check.json`` and ``OUT/gpu-check.md``
after every stage (``"complete": false`` until the end). The verdict judges every parity stage
(:mod:`dcssa.benchmarks.gpu.verdict`): exit 1 when one misses its thresholds or a stage failed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from dcssa.benchmarks.gpu.probe import Probe, probe
from dcssa.benchmarks.gpu.report import Report
from dcssa.runtime.cli.options import DEMO_BUNDLE
from dcssa.runtime.options import click_options, from_cli, setting

NO_GPU_EXIT = 2
#: fits about 9 minutes of an H100 slot with the setup stages (an ESTIMATE: see the stages' estimate_s)
DEFAULT_BUDGET_S = 540


@dataclass(frozen=True)
class GpuCheckOptions:
    """The settings of one gpu-check run (its command-line options)."""

    bundle: Path = setting(DEMO_BUNDLE, "Bundle to check (made from the demo checkpoint when missing).",
                           type=click.Path(path_type=Path))
    out: Path = setting(Path("gpu-check-out"), "Report folder (gpu-check.json, gpu-check.md, gpu-check.log).",
                        type=click.Path(path_type=Path))
    budget_s: float = setting(DEFAULT_BUDGET_S, "Wall-clock budget in seconds: stages run most valuable first and "
                              "a stage whose estimate no longer fits is skipped.", type=click.FloatRange(1))
    quick: bool = setting(False, "Only the sketch encoder and head at the serving profile: fp16 engines, their "
                          "parity and latency, and PyTorch eager/autocast on the same GPU.", is_flag=True)
    stages: tuple[str, ...] = setting((), "Comma list of stages to run (default: all this machine can run).",
                                      flag="--stage", to_cli=",".join, show_default=False,
                                      from_cli=lambda text: tuple(s for s in text.split(",") if s) if text else ())
    max_batch: int = setting(8, "Batch the engines are built and tuned for (serve --max-batch).",
                             type=click.IntRange(1))
    version_compatible: bool = setting(False, "Build version-compatible engines (they load on later TensorRT "
                                       "releases of the same major, e.g. a Triton server's).", is_flag=True)


def no_gpu(report: Report, found: Probe, say: Callable[[str], None]) -> int:
    """Stop at once: the report names every missing component; exit 2."""
    missing = found.missing()
    report.finish({"passed": False, "exit": NO_GPU_EXIT, "problems": [f"no GPU: {missing.get('gpu')}"],
                   "judged": {}}, 0.0)
    say(f"gpu-check: no usable NVIDIA GPU here, nothing was run: {missing.get('gpu')}")
    for what, how in missing.items():
        if what != "gpu":
            say(f"gpu-check: missing {what}: {how}")
    say(f"gpu-check: report: {report.out / 'gpu-check.md'}")
    return NO_GPU_EXIT


def gpu_check(options: GpuCheckOptions, *, found: Probe | None = None, stages=None, backend=None,
              say: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> int:
    """Run the check; returns the exit code (0 pass, 1 verdict failed, 2 no GPU). ``found``,
    ``stages`` and ``backend`` are the machine, the stage table and the backend factory (tests
    pass stand-ins)."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    from dcssa.benchmarks.gpu.bodies import STAGES

    names = [s.name for s in (STAGES if stages is None else stages)]
    if unknown := sorted(set(options.stages) - set(names)):
        raise click.BadParameter(f"no stage {', '.join(unknown)}; the stages: {', '.join(names)}", param_hint="--stage")
    found = found or probe(bundle_ready=(Path(options.bundle) / "manifest.json").is_file())
    report = Report(options.out, {"options": {k: str(v) for k, v in vars(options).items()},
                                  "machine": found.to_json()})
    if not found.gpu:
        return no_gpu(report, found, say)
    from dcssa.benchmarks.gpu.stages import Context, plan, run_stages
    from dcssa.benchmarks.gpu.verdict import verdict

    table = STAGES if stages is None else stages
    say(f"gpu-check: {found.onnxruntime_note()}")
    chosen, skipped = plan(table, found.capabilities(), quick=options.quick,
                           only=options.stages)
    report.plan([s.name for s in chosen], skipped)
    for name, why in skipped.items():
        say(f"gpu-check: skipping {name}: {why}")
    start = clock()
    ctx = Context(Path(options.bundle), Path(options.out), options, found.capabilities(),
                  backend=backend or default_backend(Path(options.out)), deadline=start + options.budget_s, clock=clock)
    run_stages(chosen, ctx, report, say=say)
    result = verdict(report.data["stages"])
    report.finish(result, clock() - start)
    for problem in result["problems"]:
        say(f"gpu-check: FAIL: {problem}")
    say(f"gpu-check: {'PASS' if result['passed'] else 'FAIL'}; report: {report.out / 'gpu-check.md'}")
    return result["exit"]


def default_backend(out: Path) -> Callable[[str], object]:
    """Backend names as the runtime resolves them; ort-trt with its engine cache in the report folder."""
    def make(name: str):
        if name == "ort-trt":
            from dcssa.runtime.backends.ort import OrtBackend

            return OrtBackend("ort-trt", cache_dir=out / "ort-trt-cache")
        if name == "tensorrt-cuda-graphs":
            from dcssa.runtime.backends.tensorrt import TensorRTBackend

            return TensorRTBackend(cuda_graphs=True)
        return name
    return make


@click.command("gpu-check", short_help="The GPU path on a GPU box, in budgeted stages (exit 2 at once without a GPU).")
@click_options(GpuCheckOptions)
@click.pass_context
def command(ctx: click.Context, **kwargs) -> None:
    """The GPU path's first contact with a GPU: TensorRT engines and their parity with onnxruntime CPU,
    per-stroke latency, PyTorch on the same GPU, onnxruntime's TensorRT provider, most valuable first
    inside --budget-s. Writes OUT/gpu-check.json and OUT/gpu-check.md after every stage. Exit 0: every
    check passed; 1: an engine missed its parity thresholds or a stage failed; 2: no usable GPU here
    (the report names what is missing)."""
    options, _ = from_cli(GpuCheckOptions, kwargs)
    ctx.exit(gpu_check(options))

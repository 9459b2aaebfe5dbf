"""``dcssa-bench ptq-compare``: our INT8 quantiser against the field's PTQ tools, on the same graph,
calibration and held-out data.

Every variant quantises the bundle's fp32 sketch encoder from the same calibration rasters (stroke
prefixes of the calibration sketches, :func:`dcssa.calibration.job.prepare`, as ``dcssa-export
calibrate`` reads them) and is judged by :func:`dcssa.calibration.fidelity.fidelity_report` on the
same held-out prefixes, gallery and fp32 reference: cosine to fp32, top-1 agreement, top-10 overlap,
target accuracy (and whatever else the report carries: it is passed through whole), and the encoder
latency ratio to fp32 on onnxruntime CPU, measured in alternating blocks
(:func:`~dcssa.calibration.fidelity.interleaved_latency`). Also the wall time of making the graph
and, with ``--openvino``, each Q/DQ graph's latency on OpenVINO against OpenVINO fp32.

Variants (``--variants``, comma list; default: all but ``nncf-control`` and the ``-trt`` ones):

- ``ort-default``: onnxruntime.quantization ``quantize_static`` with our ranges and ``--recipe default``
- ``ort-all``: the same quantiser on every searchable block (what ``nncf-mixed`` quantises)
- ``nncf-mixed``: NNCF, preset MIXED, every layer its patterns allow, fast bias correction
- ``nncf-recipe``: the same with the default recipe's float blocks as NNCF's ignored scope
- ``nncf-sq``: NNCF MIXED with SmoothQuant (matmul 0.95 and convolution 0.5; model_type TRANSFORMER)
- ``nncf-recipe-sq``: ``nncf-recipe`` with SmoothQuant
- ``nncf-control``: NNCF's ``quantize_with_accuracy_control`` from every layer, reverting layers to
  float until the task objective (default ``--max-drop``) holds (``calibrate --quantiser nncf
  --recipe search``; ranked on 16 held-out sketches)
- ``aimet-adaround``: AIMET-ONNX AdaRound (weights) + min/max activation encodings, when aimet-onnx
  is importable (not a project dependency; skipped with the reason otherwise)
- ``ort-default-trt`` / ``nncf-recipe-trt``: the symmetric-activation (TensorRT) graphs, on demand

    dcssa-bench ptq-compare --bundle demo-out/bundle --data demo-out/data/Shapes \\
        --out ptq-out
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from dcssa.benchmarks.env import environment
from dcssa.benchmarks.markdown import row, rule
from dcssa.runtime.cli.console import fail_cleanly
from dcssa.runtime.cli.options import bundle_option, output_options, threads_option
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Progress

SQ_ALPHAS = {"matmul": 0.95, "convolution": 0.5}
DEFAULT_VARIANTS = ("ort-default", "ort-all", "nncf-mixed", "nncf-recipe", "nncf-sq", "nncf-recipe-sq", "aimet-adaround")
ALL_VARIANTS = (*DEFAULT_VARIANTS, "nncf-control", "ort-default-trt", "nncf-recipe-trt")
# the calibrate job's defaults (calibration.options.CalibrationOptions: a test checks they agree; the CLI
# does not import dcssa.calibration to read them, so that `dcssa-bench` starts light)
MAX_CALIB = 96  # calibration rasters
LATENCY_RASTERS = 8  # held-out rasters timed per block
LATENCY_REPEATS = 3  # blocks per graph, alternating with fp32


@dataclass
class Variant:
    name: str
    describe: str
    make: Callable[[Path, object, Progress], dict]  # (out path, Prepared, progress) -> summary/options


def _ort(symmetric: bool, every_block: bool = False) -> Callable:
    def make(out: Path, prep, say: Progress) -> dict:
        from dataclasses import replace

        from dcssa.calibration.int8 import collect_ranges, quantize_int8, searchable_blocks
        from dcssa.calibration.job import DEFAULT_RECIPE

        fp32 = prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")
        recipe = DEFAULT_RECIPE
        if every_block:  # what NNCF quantises without an ignored scope, with our quantiser
            import onnx

            recipe = replace(DEFAULT_RECIPE, blocks=searchable_blocks(onnx.load(str(fp32), load_external_data=False)))
        cache = out.with_suffix(".ranges.json")
        with say.bar(len(prep.calib), "ort ranges", "raster") as bar:
            collect_ranges(fp32, prep.calib, recipe.method, cache, symmetric=symmetric, on_batch=bar.update)
        summary = quantize_int8(fp32, out, recipe, cache, symmetric=symmetric)
        return {"quantiser": "ort", "options": recipe.record(symmetric=symmetric), "summary": summary}

    return make


def _nncf(ignored: bool, sq: bool, symmetric: bool = False) -> Callable:
    def make(out: Path, prep, say: Progress) -> dict:
        from dcssa.calibration.job import DEFAULT_RECIPE
        from dcssa.calibration.nncf_ptq import NncfOptions, quantize_nncf

        opts = NncfOptions(ignored_recipe=DEFAULT_RECIPE if ignored else None,
                           smooth_quant=dict(SQ_ALPHAS) if sq else None).for_target(symmetric=symmetric)
        fp32 = prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")
        summary = quantize_nncf(fp32, out, prep.calib, opts, quiet=say.quiet)
        return {"quantiser": "nncf", "options": opts.record(), "summary": summary}

    return make


def _nncf_control(out: Path, prep, say: Progress) -> dict:
    from dcssa.calibration.nncf_control import TaskScore, quantize_with_task_control
    from dcssa.calibration.nncf_ptq import NncfOptions

    opts = NncfOptions(accuracy_control=True, ranking_sketches=16)
    score = TaskScore(prep)  # the yardstick of prepare(), which reports through ``say``
    fp32 = prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")
    summary = quantize_with_task_control(fp32, out, prep.calib, score, opts, quiet=say.quiet)
    return {"quantiser": "nncf", "options": opts.record(), "summary": summary}


#: AdaRound's budget (``--adaround-iterations/--adaround-rasters``). AIMET recommends 10000 iterations
#: per layer; measured here (2 shared cores) one 17x17 layer costs ~14 s to sample its activations over
#: 8 rasters plus ~0.11 s per iteration, so 10000 iterations over the 94 convolutions: ~29 hours.
ADAROUND = {"iterations": 100, "rasters": 16}


def _adaround(out: Path, prep, say: Progress) -> dict:
    """AIMET-ONNX: QuantizationSimModel (int8 weights per channel, int8 activations, min/max; AIMET's
    per-channel default config: every op output quantised), AdaRound on the weights over a spread
    subset of the calibration rasters, activation encodings over all of them, exported as Q/DQ
    (activations unsigned, as AIMET exports them by default)."""
    import onnx

    try:
        import aimet_onnx
        from aimet_onnx.adaround.adaround_weight import Adaround
        from aimet_onnx.quantsim import QuantizationSimModel
    except ImportError as exc:
        raise _Skip(f"aimet-onnx is not importable ({exc})") from None
    from importlib.metadata import version

    from dcssa.calibration.int8 import fix_ir_version
    from dcssa.calibration.nncf_ptq import qdq_summary

    fp32 = prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")
    config = Path(aimet_onnx.__file__).parent / "common" / "quantsim_config" / "default_config_per_channel.json"
    sim = QuantizationSimModel(onnx.load(str(fp32)), param_type="int8", activation_type="int8",
                               quant_scheme="min_max", config_file=str(config), providers=["CPUExecutionProvider"])
    sub = prep.calib.subsample(ADAROUND["rasters"])
    ada_inputs = [{mf.IMAGES: sub.images(i, i + 1)} for i in range(len(sub))]
    say(f"aimet-adaround: AdaRound, {ADAROUND['iterations']} iterations per layer over {len(sub)} rasters "
        "(AIMET recommends 10000 iterations)")
    Adaround.apply_adaround(sim, ada_inputs, num_iterations=ADAROUND["iterations"])
    sim.compute_encodings([{mf.IMAGES: prep.calib.images(i, i + 1)} for i in range(len(prep.calib))])
    q = fix_ir_version(sim.to_onnx_qdq())
    onnx.checker.check_model(q, full_check=True)
    out.write_bytes(q.SerializeToString())
    return {"quantiser": "aimet-onnx", "options": {
        "aimet_onnx_version": version("aimet-onnx"), "config": config.name, "adaround_iterations": ADAROUND["iterations"],
        "adaround_rasters": len(sub), "encoding_rasters": len(prep.calib), "quant_scheme": "min_max",
        "param_type": "int8", "activation_type": "int8, exported unsigned"}, "summary": qdq_summary(q)}


class _Skip(Exception):
    """A variant that cannot run here (a missing optional library); recorded with the reason."""


VARIANTS = {
    "ort-default": Variant("ort-default", "onnxruntime quantize_static, --recipe default (entropy, 8 blocks)", _ort(False)),
    "ort-all": Variant("ort-all", "onnxruntime quantize_static, entropy, every searchable block (stem to 7c, "
                       "attention projections)", _ort(False, every_block=True)),
    "nncf-mixed": Variant("nncf-mixed", "NNCF MIXED, all layers, fast bias correction", _nncf(False, False)),
    "nncf-recipe": Variant("nncf-recipe", "NNCF MIXED, default recipe's float blocks ignored, fast bias correction",
                           _nncf(True, False)),
    "nncf-sq": Variant("nncf-sq", "NNCF MIXED + SmoothQuant (matmul 0.95, conv 0.5), all layers", _nncf(False, True)),
    "nncf-recipe-sq": Variant("nncf-recipe-sq", "NNCF MIXED + SmoothQuant, default recipe's float blocks ignored",
                              _nncf(True, True)),
    "nncf-control": Variant("nncf-control", "NNCF quantize_with_accuracy_control, validated on the task objective "
                            "(m@B, acc@10 upper bounds), from every layer", _nncf_control),
    "aimet-adaround": Variant("aimet-adaround", "AIMET-ONNX AdaRound (--adaround-iterations per layer) + min/max, "
                              "all layers, per-channel weights", _adaround),
    "ort-default-trt": Variant("ort-default-trt", "ort-default, symmetric int8 activations (TensorRT graph)", _ort(True)),
    "nncf-recipe-trt": Variant("nncf-recipe-trt", "nncf-recipe, PERFORMANCE + signed activations (TensorRT graph)",
                               _nncf(True, False, True)),
}


def _openvino_latency(prep, path: Path, rasters: int, repeats: int) -> dict:
    from dcssa.calibration import fidelity as fd
    from dcssa.runtime.backends import get_backend

    ov = get_backend("openvino", threads=getattr(prep.backend, "threads", None))
    spec = prep.bundle.graph_spec(mf.SKETCH_ENCODER)
    fp32 = ov.load(prep.bundle.graph_path(mf.SKETCH_ENCODER, "fp32"), spec=spec)
    q = ov.load(path, spec=spec)
    pick = np.unique(np.linspace(0, len(prep.held) - 1, rasters).round().astype(int))
    imgs = np.concatenate([prep.held.images(i, i + 1) for i in pick])
    lat = fd.interleaved_latency(fp32, q, imgs, repeats=repeats)
    lat["backend"] = "openvino"
    return lat


def run_compare(bundle_path: Path, data: str, out: Path, variants: list[str], *, photos: Path | None = None,
                gallery: Path | None = None, max_calib: int = MAX_CALIB, max_heldout: int | None = None,
                latency_rasters: int = LATENCY_RASTERS, latency_repeats: int = LATENCY_REPEATS, openvino: bool = False,
                threads: int | None = None, quiet: bool = False,
                on_variant: Callable[[dict], None] = lambda _rep: None) -> dict:
    """The report; ``on_variant`` gets it after every variant (``complete`` false until the last), so a
    run stopped after hours keeps what it measured."""
    from dcssa.calibration import fidelity as fd
    from dcssa.calibration.job import prepare
    from dcssa.calibration.options import CalibrationOptions
    from dcssa.runtime.contract.bundle import Bundle

    say = Progress(quiet)
    out.mkdir(parents=True, exist_ok=True)
    graphs = out / "graphs"
    graphs.mkdir(exist_ok=True)
    bundle = Bundle.load(bundle_path)
    options = CalibrationOptions(photos=photos, fidelity_gallery=gallery, max_calib=max_calib, max_heldout=max_heldout,
                                 threads=threads, noise_floor=False)
    prep = prepare(bundle, data, graphs, options, say=say, quiet=quiet)
    results: dict[str, dict] = {}

    def report(complete: bool) -> dict:
        return {
            "schema": "dcssa-ptq-compare/1",
            "complete": complete,
            "variants_asked": list(variants),
            "env": {**environment(threads), "load_average": os.getloadavg(), "nncf": _version("nncf"),
                    "aimet_onnx": _version("aimet-onnx")},
            "bundle": str(bundle_path),
            "data": str(data),
            "calibration_prefixes": len(prep.calib),
            "heldout": {"sketches": len(prep.held.sketches), "prefixes": len(prep.held)},
            "gallery": {"photos": len(prep.gallery.ids), "rule": prep.gallery.rule, "source": prep.gallery.source},
            "latency": {"rasters": latency_rasters, "repeats": latency_repeats,
                        "scheme": "fidelity.interleaved_latency: fp32 and the variant in alternating blocks"},
            "variants": dict(results),
        }

    for k, name in enumerate(variants):
        v = VARIANTS[name]
        say(f"[{k + 1}/{len(variants)}] {name}: {v.describe}")
        path = graphs / f"{name}.onnx"
        t0 = time.perf_counter()
        try:
            made = v.make(path, prep, say)
        except _Skip as exc:
            say(f"  skipped: {exc}")
            results[name] = {"describe": v.describe, "skipped": str(exc)}
            on_variant(report(False))
            continue
        except Exception as exc:  # noqa: BLE001 - a failing tool is a result to record, not the end of the run
            say(f"  FAILED: {type(exc).__name__}: {exc}")
            results[name] = {"describe": v.describe, "failed": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc(limit=8)}
            on_variant(report(False))
            continue
        seconds = time.perf_counter() - t0
        with say.bar(len(prep.held), f"{name} fidelity", "raster") as bar:
            rep = fd.fidelity_report(bundle, path, "int8", prep.held, prep.gallery, prep.ref, backend=prep.backend,
                                     latency_rasters=latency_rasters, latency_repeats=latency_repeats,
                                     on_batch=bar.update)
        res = {"describe": v.describe, **made, "calibrate_seconds": seconds, "file": str(path),
               "bytes": path.stat().st_size, "fidelity": rep}
        if openvino:
            try:
                res["openvino_latency"] = _openvino_latency(prep, path, latency_rasters, latency_repeats)
            except DcssaError as exc:
                res["openvino_latency"] = {"error": exc.message}
        results[name] = res
        say("  " + fd.summary_line(name, rep) + f", made in {seconds:.0f} s")
        on_variant(report(False))
    return report(True)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _acc(rep: dict) -> str:
    acc = rep.get("target_accuracy")
    if not acc:
        return "-"
    ref = acc.get("fp32") or {}
    mine = next((v for k, v in acc.items() if k != "fp32" and isinstance(v, dict)), {}) or {}
    return f"{ref.get('acc@1', float('nan')):.2f} -> {mine.get('acc@1', float('nan')):.2f}"


def _drop(rep: dict, metric: str) -> str:
    t = (rep.get("task") or {}).get(metric)
    return "-" if not t else f"{t['drop']:+.3f} ({t['drop_upper']:+.3f})"


def markdown(rep: dict) -> str:
    env = rep["env"]
    head = ["variant", "cosine mean / min", "top-1 agreement", "top-10 overlap", "acc@1 fp32 -> int8",
            "m@B drop (95% upper)", "acc@10 drop (upper)",
            "ort CPU latency vs fp32", "OpenVINO int8 vs OV fp32", "time to make (s)"]
    lines = [
        f"Bundle {rep['bundle']}; data {rep['data']}: {rep['calibration_prefixes']} calibration prefixes, "
        f"{rep['heldout']['prefixes']} held-out prefixes of {rep['heldout']['sketches']} sketches, gallery "
        f"{rep['gallery']['photos']} photos ({rep['gallery']['rule']}).",
        f"Machine: {env['cpu']} ({env['isa']}), {env['cores']} cores, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])}; onnxruntime {env['onnxruntime']}, "
        f"openvino {env['openvino']}, nncf {env['nncf']}, aimet-onnx {env['aimet_onnx']}.",
        "",
        row(head),
        rule(len(head)),
    ]
    if not rep.get("complete", True):
        done = len(rep["variants"])
        lines.insert(2, f"**Partial**: {done} of {len(rep.get('variants_asked', []))} variants measured so far "
                        "(the run was stopped or is still running).")
    notes = []
    for name, r in rep["variants"].items():
        if "fidelity" not in r:
            notes.append(f"- {name}: {'skipped' if 'skipped' in r else 'FAILED'}: {r.get('skipped') or r.get('failed')}")
            continue
        f = r["fidelity"]
        c = f["embedding_cosine"]
        lat = f.get("latency", {})
        ov = r.get("openvino_latency", {})
        lat_cell = f"{lat['ratio']:.2f}x ({lat['reduced_ms']:.0f} / {lat['fp32_ms']:.0f} ms)" if "ratio" in lat else "-"
        ov_cell = (f"{ov['ratio']:.2f}x ({ov['reduced_ms']:.0f} / {ov['fp32_ms']:.0f} ms)" if "ratio" in ov
                   else ov.get("error", "-"))
        lines.append(row([name, f"{c['mean']:.4f} / {c['min']:.4f}", f"{f['top1_agreement']:.1%}",
                          f"{f['top10_overlap']:.1%}", _acc(f), _drop(f, "m@B"), _drop(f, "acc@10"), lat_cell, ov_cell,
                          f"{r['calibrate_seconds']:.0f}"]))
    lines += ["", *[f"- {n}: {r['describe']}" for n, r in rep["variants"].items()], *notes]
    return "\n".join(lines) + "\n"


@click.command("ptq-compare")
@bundle_option()
@click.option("--data", required=True, help="Sketch data, as `dcssa-export calibrate --data` takes it.")
@click.option("--photos", type=click.Path(path_type=Path), default=None, help="Fidelity gallery photos [default: the data's].")
@click.option("--gallery", type=click.Path(path_type=Path), default=None, help="An existing gallery folder instead.")
@click.option("--variants", default=",".join(DEFAULT_VARIANTS), show_default=True,
              help=f"Comma list of: {', '.join(ALL_VARIANTS)}.")
@click.option("--max-calib", type=click.IntRange(1), default=MAX_CALIB, show_default=True, help="Calibration rasters.")
@click.option("--max-heldout", type=click.IntRange(1), default=None, help="Cap on held-out prefixes (whole sketches).")
@click.option("--latency-rasters", type=click.IntRange(0), default=LATENCY_RASTERS, show_default=True,
              help="Held-out rasters timed per block (0: no latency).")
@click.option("--latency-repeats", type=click.IntRange(1), default=LATENCY_REPEATS, show_default=True,
              help="Blocks per graph, alternating with fp32.")
@click.option("--openvino", is_flag=True, help="Also time each Q/DQ graph on OpenVINO against OpenVINO fp32.")
@click.option("--adaround-iterations", type=click.IntRange(1), default=ADAROUND["iterations"], show_default=True,
              help="AdaRound iterations per layer (AIMET recommends 10000: estimated at over a day on 2 cores here).")
@click.option("--adaround-rasters", type=click.IntRange(1), default=ADAROUND["rasters"], show_default=True,
              help="Calibration rasters AdaRound samples each layer's activations on (spread over the set).")
@threads_option()
@click.option("--out", type=click.Path(path_type=Path), default=Path("ptq-out"), show_default=True,
              help="Folder for ptq-compare.json, ptq-compare.md and the graphs.")
@output_options()
def command(bundle: Path, data: str, photos: Path | None, gallery: Path | None, variants: str, max_calib: int,
            max_heldout: int | None, latency_rasters: int, latency_repeats: int, openvino: bool,
            adaround_iterations: int, adaround_rasters: int, threads: int | None, out: Path, quiet: bool) -> None:
    """INT8 of the sketch encoder by onnxruntime (our recipe), NNCF and AIMET AdaRound, side by side
    (the bundle needs its fp32 sketch encoder)."""
    names = [v.strip() for v in variants.split(",") if v.strip()]
    ADAROUND.update(iterations=adaround_iterations, rasters=adaround_rasters)
    with fail_cleanly():
        bad = [v for v in names if v not in VARIANTS]
        if bad or not names:
            raise DcssaError(f"unknown variant {', '.join(bad) or repr(variants)}", hint=f"choose among {', '.join(ALL_VARIANTS)}")
        t0 = time.time()

        def save(rep: dict) -> str:
            rep["seconds"] = round(time.time() - t0, 1)
            md = markdown(rep)
            for name, text in (("ptq-compare.json", json.dumps(rep, indent=2) + "\n"), ("ptq-compare.md", md)):
                tmp = out / f".{name}.tmp"  # a reader never sees half a report
                tmp.write_text(text)
                os.replace(tmp, out / name)
            return md

        rep = run_compare(bundle, data, out, names, photos=photos, gallery=gallery, max_calib=max_calib,
                          max_heldout=max_heldout, latency_rasters=latency_rasters, latency_repeats=latency_repeats,
                          openvino=openvino, threads=threads, quiet=quiet, on_variant=save)
        md = save(rep)
    click.echo(md)


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.ptq_compare` is deprecated: use `dcssa-bench ptq-compare` (the same options)")
    command(prog_name="dcssa-bench ptq-compare")

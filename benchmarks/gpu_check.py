"""``dcssa-bench gpu-check`` (``make gpu-check``): the GPU path end to end, in one command, on the day a GPU box exists.

On a machine with an NVIDIA GPU, TensorRT (10.x / 11.x) and the CUDA bindings, it

1. makes the demo bundle when ``--bundle`` has none (demo checkpoint, export, a synthetic catalogue
   and its gallery) and adds the fp16 and int8 graphs (``calibrate --recipe default``);
2. builds fp32 / fp16 / int8 TensorRT engines with TensorRT's VERBOSE builder log (``engines.log``);
3. checks each engine's sketch embeddings against onnxruntime CPU fp32 over 24 strokes;
4. runs ``--backend ort-trt`` over a growing K/V cache, counting the TensorRT provider's engine
   files and the strokes whose head step took far longer than the median (likely rebuilds);
5. runs two threads on one native TensorRT retriever and compares with one thread;
6. times the int8 and fp16 sketch-encoder engines and says which one a benchmark would pick;
7. runs ``dcssa-bench run`` on the GPU backends;

and writes everything to ``OUT/gpu-check.json``. Anywhere else it stops at once, before importing
anything heavy, with the reason and exit code 2. Nothing here has been run on a GPU yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from dcssa.runtime.cli.options import DEMO_BUNDLE

NO_GPU_EXIT = 2
STROKES = 24


def preflight() -> str | None:
    """Why the GPU check cannot run here (None when it can): TensorRT, the CUDA bindings, a device."""
    from dcssa.runtime.backends.tensorrt import TensorRTBackend
    from dcssa.runtime.errors import DcssaError

    try:
        TensorRTBackend.unavailable_reason()
    except DcssaError as exc:  # BackendError, or MissingExtra (no tensorrt package)
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    return None


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(cmd: list[str], log: Path | None = None) -> None:
    """Run a CLI step; its output goes to ``log`` (appended) or through; a failure stops the check."""
    print("gpu-check: $ " + " ".join(cmd), file=sys.stderr, flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    with log.open("a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"gpu-check: step failed (exit {proc.returncode}), see {log}: {' '.join(cmd)}")


def ensure_bundle(bundle: Path, work: Path, log: Path) -> tuple[Path, Path]:
    """(bundle, gallery) with fp16 and int8 graphs, made from the demo checkpoint when missing."""
    gallery = bundle / "gallery"
    if not (bundle / "manifest.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        _run([_bin("dcssa-export"), "demo-checkpoint", str(work / "demo.pth")], log)
        _run([_bin("dcssa-export"), "--ckpt", str(work / "demo.pth"), "--out", str(bundle), "--force"], log)
    data = work / "data"
    if not gallery.is_dir() or not (data / "Shapes").is_dir():
        _run([_bin("dcssa-rt"), "make-dataset", str(data), "--photos", "40", "--seed", "0", "--force"], log)
        _run([_bin("dcssa-rt"), "index", str(data / "Shapes" / "photo"), "--bundle", str(bundle), "--force",
              "--backend", "ort-cpu"], log)
    precisions = json.loads((bundle / "manifest.json").read_text())["precisions"]
    missing = [p for p in ("fp16", "int8") if p not in precisions]
    if missing:
        _run([_bin("dcssa-export"), "calibrate", str(bundle), "--data", str(data / "Shapes"),
              "--precision", ",".join(missing), "--recipe", "default"], log)
    return bundle, gallery


def _draw(retriever, sketch) -> list:
    session = retriever.session()
    return [session.add_stroke(s) for s in sketch]


def parity(bundle_path: Path, gallery_path: Path, sketch) -> dict:
    """Each TensorRT precision against onnxruntime CPU fp32, stroke by stroke."""
    import numpy as np

    from dcssa.runtime import Bundle, Gallery, Retriever

    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle)
    ref = _draw(Retriever(bundle, gallery, backend="ort-cpu", precision="fp32"), sketch)
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        got = _draw(Retriever(bundle, gallery, backend="tensorrt", precision=precision), sketch)
        cos = [float(np.dot(a.embedding, b.embedding)) for a, b in zip(got, ref)]
        out[precision] = {
            "cosine_min": min(cos), "cosine_mean": float(np.mean(cos)),
            "top1_agreement": float(np.mean([a.ids[0] == b.ids[0] for a, b in zip(got, ref)])),
            "top10_overlap": float(np.mean([len(set(a.ids) & set(b.ids)) / max(1, len(b.ids))
                                             for a, b in zip(got, ref)])),
        }
    return out


def ort_trt_growth(bundle_path: Path, gallery_path: Path, sketch, cache: Path) -> dict:
    """ort-trt over a K/V cache growing to len(sketch) rows: engine files and slow head steps."""
    import numpy as np

    from dcssa.runtime import Bundle, Gallery, Retriever
    from dcssa.runtime.backends.ort import OrtBackend

    bundle = Bundle.load(bundle_path)
    backend = OrtBackend("ort-trt", cache_dir=cache)
    retriever = Retriever(bundle, Gallery.load(gallery_path, bundle), backend=backend, precision="fp32")
    files_before = sorted(p.name for p in cache.rglob("*") if p.is_file())
    heads = [r.timings["head"] for r in _draw(retriever, sketch)]
    files_after = sorted(p.name for p in cache.rglob("*") if p.is_file())
    med = float(np.median(heads))
    return {"strokes": len(heads), "head_ms": heads, "head_ms_median": med,
            "slow_head_steps": [i + 1 for i, h in enumerate(heads) if i and h > 10 * med],
            "cache_files_before": files_before, "cache_files_after": files_after,
            "note": "slow_head_steps: strokes after the first whose head step took > 10x the median "
                    "(an engine rebuild would show there); cache files: the provider's engines and profiles"}


def two_threads(bundle_path: Path, gallery_path: Path, sketches) -> dict:
    """Two sessions on two threads sharing one native TensorRT retriever, against one thread."""
    import numpy as np

    from dcssa.runtime import Bundle, Gallery, Retriever

    bundle = Bundle.load(bundle_path)
    retriever = Retriever(bundle, Gallery.load(gallery_path, bundle), backend="tensorrt", precision="fp32")
    alone = [_draw(retriever, s) for s in sketches]
    together: dict[int, list] = {}
    errors: list[str] = []

    def user(i: int) -> None:
        try:
            together[i] = _draw(retriever, sketches[i])
        except Exception as exc:  # noqa: BLE001 - reported
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(sketches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    diff = max((float(np.max(np.abs(a.embedding - b.embedding)))
                for i in together for a, b in zip(together[i], alone[i])), default=None)
    return {"threads": len(sketches), "errors": errors, "max_abs_diff_vs_one_thread": diff}


def encoder_pick(bundle_path: Path, runs: int = 50) -> dict:
    """Median sketch-encoder time of the int8 and fp16 engines; the faster is what a benchmark picks.

    The int8 graph's float blocks are fp32-typed (it is derived from the fp32 graph), so under
    strong typing they run in FP32: the int8 engine may lose to the fp16 one."""
    import numpy as np

    from dcssa.runtime import Bundle, Retriever
    from dcssa.runtime.contract import manifest as mf

    bundle = Bundle.load(bundle_path)
    x = np.zeros((1, 3, 299, 299), np.float32)
    out = {}
    for precision in ("fp16", "int8"):
        enc = Retriever(bundle, None, backend="tensorrt", precision=precision).encoder
        for _ in range(5):
            enc.run({mf.IMAGES: x})
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            enc.run({mf.IMAGES: x})
            times.append((time.perf_counter() - t0) * 1e3)
        out[precision] = {"median_ms": float(np.median(times)), "runs": runs}
    out["pick"] = min(("fp16", "int8"), key=lambda p: out[p]["median_ms"])
    return out


def gpu_check(bundle_path: Path, out: Path, *, skip_bench: bool = False) -> int:
    """Run the check and write OUT/gpu-check.json; ``NO_GPU_EXIT`` at once, with the reason, without a GPU."""
    reason = preflight()
    if reason is not None:
        print(f"gpu-check: no GPU/TensorRT on this machine, nothing was run: {reason}", file=sys.stderr)
        print("gpu-check: run it on a machine with an NVIDIA GPU, its driver, TensorRT 10.x/11.x "
              "(pip install tensorrt, or JetPack) and pip install 'dcssa-rt[cu12]' (or [cu13], or pycuda)",
              file=sys.stderr)
        return NO_GPU_EXIT

    import numpy as np

    from dcssa.runtime.data.synthetic import random_sketch

    out.mkdir(parents=True, exist_ok=True)
    log = out / "engines.log"
    started = time.perf_counter()
    report: dict = {"bundle": str(bundle_path)}
    bundle, gallery = ensure_bundle(bundle_path, out / "work", out / "setup.log")
    _run([_bin("dcssa-export"), "engines", str(bundle), "--precision", "fp32,fp16,int8", "--verbose"], log)
    report["engines"] = json.loads((bundle / "manifest.json").read_text())["engines"]
    report["engines_log"] = str(log)
    sketch = random_sketch(np.random.default_rng(0), STROKES)
    report["parity"] = parity(bundle, gallery, sketch)
    report["ort_trt_growth"] = ort_trt_growth(bundle, gallery, sketch, out / "ort-trt-cache")
    report["two_threads"] = two_threads(bundle, gallery, [random_sketch(np.random.default_rng(s), 12) for s in (1, 2)])
    report["int8_vs_fp16"] = encoder_pick(bundle)
    if not skip_bench:
        _run([_bin("dcssa-bench"), "run", "--bundle", str(bundle), "--gallery", str(gallery), "--out",
              str(out / "bench"), "--backend", "tensorrt", "--backend", "ort-trt", "--repeats", "2",
              "--search-sizes", "", "--peers", "eager", "--force"], out / "bench.log")
        report["bench"] = str(out / "bench" / "bench.json")
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu-check: report written to {out / 'gpu-check.json'} ({report['seconds']} s)", file=sys.stderr)
    return 0


@click.command("gpu-check", short_help="The GPU path end to end (exit 2 at once without a GPU).")
@click.option("--bundle", type=click.Path(path_type=Path), default=DEMO_BUNDLE, show_default=True,
              help="Bundle to check (made from the demo checkpoint when missing).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gpu-check-out"), show_default=True,
              help="Report folder.")
@click.option("--skip-bench", is_flag=True, help="Leave out `dcssa-bench run`.")
@click.pass_context
def command(ctx: click.Context, bundle: Path, out: Path, skip_bench: bool) -> None:
    """The GPU path end to end, in one command, on the day a GPU box exists: engines, parity with
    onnxruntime CPU, ort-trt over a growing cache, two threads, int8 vs fp16, and a benchmark run; writes
    OUT/gpu-check.json. Without an NVIDIA GPU and TensorRT it stops at once with the reason (exit 2)."""
    ctx.exit(gpu_check(bundle, out, skip_bench=skip_bench))


if __name__ == "__main__":  # pragma: no cover - the 0.1 entry point, removed in 0.3
    from dcssa.runtime.cli.console import warn

    warn("`python -m dcssa.benchmarks.gpu_check` is deprecated: use `dcssa-bench gpu-check` (the same options)")
    command(prog_name="dcssa-bench gpu-check")

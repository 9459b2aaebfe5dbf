"""Per-stroke latency of one 20-stroke sketch: research-code style (naive), eager PyTorch, our runtime.

All methods run the same sketch on the same machine, interleaved repeat by repeat (method order
rotates every repeat) after a warm-up sketch, so drift and caches hit every method alike.

* ``naive``: what the research code does for a live user: at stroke t rasterise and encode all t
  partial sketches again, then the full head, in eager PyTorch (ARNet, which has no head: rasterise
  the whole partial sketch again and encode it).
* ``torch-eager``: the authors' modules used well: one encoder pass at stroke t (on the kept canvas),
  then the head on the prefix, eager PyTorch under ``inference_mode``.
* ``runtime/<backend>/<precision>``: our stroke session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.progress import Say, silent
from dcssa.runtime.strokes import strokes_to_points

SETTLE_S = 0.2
T = TypeVar("T")


def rotated(items: Sequence[T], k: int) -> list[T]:
    """``items`` starting at ``k`` (mod len): who goes first changes every round, so drift hits all alike."""
    k %= len(items)
    return [*items[k:], *items[:k]]


@dataclass
class Method:
    name: str
    start: Callable[[], None]  # a new sketch (session) begins
    stroke: Callable[[int], object]  # add stroke t (0-based)
    phases: list[dict] = field(default_factory=list)


def runtime_method(retriever: Retriever, sketch: list[np.ndarray], name: str) -> Method:
    state: dict = {}

    def start() -> None:
        state["s"] = retriever.session()

    def stroke(t: int) -> object:
        res = state["s"].add_stroke(sketch[t])
        m.phases.append(res.timings)
        return res

    m = Method(name, start, stroke)
    m.session = state  # type: ignore[attr-defined]
    return m


def torch_methods(bundle: Bundle, ckpt, gallery: Gallery, sketch: list[np.ndarray], threads: int | None) -> list[Method]:
    """The two PyTorch baselines, built from the checkpoint (needs the [export] extra)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if bundle.family == "arnet":
        return _arnet_methods(bundle, ckpt, gallery, sketch)
    from dcssa.export.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt, num_heads=bundle.heads).model.eval()
    pipe = bundle.sketch_pipeline  # the runtime's own canvas and preprocessing: only the model differs
    photos = torch.from_numpy(np.array(gallery.embeddings, np.float32))  # a copy: the gallery is a read-only memmap
    state: dict = {}

    def head(feats):
        return model.attn(feats) if bundle.phase == 2 else model.sketch_linear(feats)

    def search(e):
        return torch.topk(photos @ e, min(10, len(photos)))

    def naive_start() -> None:
        pass

    def naive_stroke(t: int) -> object:
        with torch.inference_mode():
            rasters = np.concatenate([pipe.preprocess(pipe.rasterize(strokes_to_points(sketch[: i + 1])))
                                      for i in range(t + 1)])
            feats = model.sketch_feature(torch.from_numpy(rasters))
            return search(head(feats)[-1])

    def eager_start() -> None:
        state["canvas"] = pipe.canvas()
        state["feats"] = []

    def eager_stroke(t: int) -> object:
        with torch.inference_mode():
            state["canvas"].add_stroke(sketch[t])
            f = model.sketch_feature(torch.from_numpy(pipe.preprocess(state["canvas"].image)))
            state["feats"].append(f)
            return search(head(torch.cat(state["feats"]))[-1])

    return [Method("naive", naive_start, naive_stroke), Method("torch-eager", eager_start, eager_stroke)]


def _arnet_methods(bundle: Bundle, ckpt, gallery: Gallery, sketch: list[np.ndarray]) -> list[Method]:
    """ARNet's baselines: no head, so each stroke is one encoder pass; naive redraws from scratch."""
    import torch

    from dcssa.export.arnet import load_arnet_checkpoint

    path = ckpt[0] if isinstance(ckpt, (list, tuple)) else ckpt
    model = load_arnet_checkpoint(path, num_heads=bundle.heads).sketch.eval()
    pipe = bundle.sketch_pipeline
    photos = torch.from_numpy(np.array(gallery.embeddings, np.float32))
    state: dict = {}

    def search(e):
        return torch.topk(photos @ e, min(10, len(photos)))

    def naive_stroke(t: int) -> object:
        with torch.inference_mode():
            x = pipe.preprocess(pipe.rasterize(strokes_to_points(sketch[: t + 1])))
            return search(model(torch.from_numpy(x))[0])

    def eager_start() -> None:
        state["canvas"] = pipe.canvas()

    def eager_stroke(t: int) -> object:
        with torch.inference_mode():
            state["canvas"].add_stroke(sketch[t])
            return search(model(torch.from_numpy(pipe.preprocess(state["canvas"].image)))[0])

    return [Method("naive", lambda: None, naive_stroke), Method("torch-eager", eager_start, eager_stroke)]


def measure(methods: list[Method], strokes: int, repeats: int, say: Say = silent) -> dict[str, np.ndarray]:
    """ms[method] = (repeats, strokes), interleaved; one untimed warm-up sketch per method first."""
    for m in methods:
        say(f"warm-up: {m.name}")
        m.start()
        for t in range(min(strokes, 2)):
            m.stroke(t)
        m.phases.clear()
    out = {m.name: np.zeros((repeats, strokes)) for m in methods}
    for r in range(repeats):
        for m in rotated(methods, r):
            say(f"repeat {r + 1}/{repeats}: {m.name}")
            # let the previous method's thread pools stop spin-waiting, so its idle workers do not
            # take the cores from this method's first stroke (a drawing user pauses between strokes)
            time.sleep(SETTLE_S)
            m.start()
            for t in range(strokes):
                t0 = time.perf_counter()
                m.stroke(t)
                out[m.name][r, t] = (time.perf_counter() - t0) * 1e3
    return out


def undo_ms(retriever: Retriever, sketch: list[np.ndarray], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        s = retriever.session()
        for stroke in sketch[:5]:
            s.add_stroke(stroke)
        for _ in range(s.num_strokes):
            t0 = time.perf_counter()
            s.undo()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def cold_ms(bundle_path, gallery_path, backend: str, precision: str, sketch, threads, repeats: int) -> dict:
    """A restart: loading the bundle (hash checks), the gallery and the graphs, then the first result.

    Medians in ms of ``load``, ``first_stroke`` (a new session's first stroke on just-loaded graphs)
    and their ``total``.
    """
    load, first = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b = Bundle.load(bundle_path)
        r = Retriever(b, Gallery.load(gallery_path, b), backend=backend, precision=precision, threads=threads)
        t1 = time.perf_counter()
        r.session().add_stroke(sketch[0])
        t2 = time.perf_counter()
        load.append((t1 - t0) * 1e3)
        first.append((t2 - t1) * 1e3)
        del r
    total = [a + b for a, b in zip(load, first)]
    return {"load": float(np.median(load)), "first_stroke": float(np.median(first)), "total": float(np.median(total))}


#: Run in the child after the session: its own peak. ``ru_maxrss`` is no good here: Linux carries the
#: forking parent's high-water mark across fork + exec, so it reported the benchmark process's
#: (torch + every backend: 6 GB) instead of the child's (0.5 GB). VmHWM is per address space.
_PEAK_RSS_MB = """
def _peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource, sys
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
"""


def peak_rss_mb(bundle_path, gallery_path, backend: str, precision: str, sketch, threads) -> float | None:
    """Peak RSS of a fresh process that serves one session of the sketch (runtime only, no torch)."""
    doc = json.dumps([s.tolist() for s in sketch])
    code = (
        "import json, sys, numpy as np\n"
        f"{_PEAK_RSS_MB}\n"
        "from dcssa.runtime import Bundle, Gallery, Retriever\n"
        f"b = Bundle.load({str(bundle_path)!r}); g = Gallery.load({str(gallery_path)!r}, b)\n"
        f"r = Retriever(b, g, backend={backend!r}, precision={precision!r}, threads={threads!r})\n"
        "s = r.session()\n"
        "for st in json.loads(sys.stdin.read()): s.add_stroke(np.array(st))\n"
        "print(_peak_rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=doc, capture_output=True, text=True)
    return float(out.stdout.strip()) if out.returncode == 0 else None

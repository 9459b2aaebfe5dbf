"""Per-stroke latency of one 20-stroke sketch: research-code style (naive), the PyTorch peers, our runtime.

All methods run the same sketch on the same machine, interleaved repeat by repeat (method order
rotates every repeat) after a warm-up sketch, so drift and caches hit every method alike.

* ``naive``: what the research code does for a live user: at stroke t rasterise and encode all t
  partial sketches again, then the full head, in eager PyTorch (ARNet, which has no head: rasterise
  the whole partial sketch again and encode it).
* ``torch-eager``, ``torch-channels-last``, ``torch-bf16``, ``torch-compile``: the authors' modules
  used well (one encoder pass at stroke t on the kept canvas, then the head on the prefix), run the
  ways a PyTorch user would try first; see :mod:`.torch_peers`.
* ``runtime/<backend>/<precision>``: our stroke session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from dcssa.benchmarks.methods import PEERS, Method
from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.progress import Say, silent

SETTLE_S = 0.2
T = TypeVar("T")


def rotated(items: Sequence[T], k: int) -> list[T]:
    """``items`` starting at ``k`` (mod len): who goes first changes every round, so drift hits all alike."""
    k %= len(items)
    return [*items[k:], *items[:k]]


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


def torch_methods(bundle: Bundle, ckpt, gallery: Gallery, sketch: list[np.ndarray], threads: int | None,
                  peers: Sequence[str] | None = None):
    """``naive`` and the PyTorch peers (:mod:`.torch_peers`, needs the [export] extra): a ``TorchMethods``."""
    from dcssa.benchmarks import torch_peers

    return torch_peers.torch_methods(bundle, ckpt, gallery, sketch, threads,
                                     tuple(PEERS if peers is None else peers))


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
            m.outputs = []
            for t in range(strokes):
                t0 = time.perf_counter()
                res = m.stroke(t)
                out[m.name][r, t] = (time.perf_counter() - t0) * 1e3
                m.outputs.append(res)
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

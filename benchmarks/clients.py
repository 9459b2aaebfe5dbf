"""The simulated users of the serving load tests (``dcssa-bench load-test`` and ``scale-out``): clients
that draw on a FRAME x FRAME canvas and post their strokes over HTTP, and the offline sessions their
final results are checked against.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from dcssa.runtime import Retriever
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.stroke.parse import MODEL_FRAME, parse_stroke

FRAME = 500.0  # clients draw on a 500 x 500 canvas and send that frame
TOL = 1e-4


def to_client(stroke: np.ndarray) -> list:
    """A model-frame stroke as a client on a FRAME x FRAME canvas posts it."""
    return (stroke * (FRAME / MODEL_FRAME)).round(2).tolist()


async def wait_healthy(client, url: str, limit: float) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if (await client.get(url + "healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise DcssaError(f"{url} never became healthy")


async def run_clients(url: str, sketches: list[list[list]], timeout: float, time_limit: float, progress) -> dict:
    """Every client opens a session and posts its strokes one after another, the clients concurrently.

    Returns client-measured latencies, errors by kind, each client's last response, wall time and the
    server's /metrics text afterwards."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    finals: list[dict | None] = [None] * len(sketches)
    limits = httpx.Limits(max_connections=len(sketches) + 2)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await wait_healthy(client, url, 120)

        async def one(i: int, strokes: list[list]) -> None:
            try:
                r = await client.post(url + "v1/sessions")
                r.raise_for_status()
                sid = r.json()["id"]
                for s in strokes:
                    t0 = time.perf_counter()
                    r = await client.post(f"{url}v1/sessions/{sid}/strokes", json={"stroke": s, "frame": [FRAME, FRAME]})
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        key = f"http_{r.status_code}"
                        errors[key] = errors.get(key, 0) + 1
                        return
                    latencies.append(dt * 1e3)
                    finals[i] = r.json()
                    progress(1)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(one(i, s) for i, s in enumerate(sketches))), time_limit)
        except asyncio.TimeoutError:
            errors["time_limit"] = errors.get("time_limit", 0) + 1
        wall = time.perf_counter() - start
        metrics = (await client.get(url + "metrics")).text
    return {"latencies_ms": latencies, "errors": errors, "finals": finals, "wall_s": wall, "metrics": metrics}


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text (NaN when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def same_topk(served: dict | None, want, gallery) -> bool:
    """Equal top-K up to near-ties (batched and single encoder calls differ by float rounding)."""
    if served is None or served["stroke"] != want.stroke:
        return False
    ids = [m["id"] for m in served["results"]]
    scores = np.array([m["score"] for m in served["results"]])
    if len(ids) != len(want.ids) or not np.allclose(scores, want.scores, atol=TOL):
        return False
    offline = gallery.scores(want.embedding)
    pos = {pid: i for i, pid in enumerate(gallery.ids)}
    return ids == want.ids or bool(np.allclose(offline[[pos[i] for i in ids]], want.scores, atol=TOL))


def offline(retriever: Retriever, sketches: list[list[list]], bar) -> list:
    """The expectation: an offline session's last result on exactly the strokes each client sends."""
    want = []
    for sk in sketches:
        s = retriever.session()
        for stroke in sk:
            res = s.add_stroke(parse_stroke(stroke, frame=[FRAME, FRAME]))
        want.append(res)
        bar.update(1)
    return want

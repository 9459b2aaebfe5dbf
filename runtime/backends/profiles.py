"""The input shapes the runtime feeds each graph, as TensorRT optimisation profiles (min, opt, max).

One definition for both GPU paths: ``dcssa-export engines`` builds native engines with these
profiles, and ``--backend ort-trt`` passes the same ones to onnxruntime's TensorRT provider
(``trt_profile_min/opt/max_shapes``). Without explicit profiles the provider derives them from the
input values it has seen, so the stroke head's K/V cache, one row longer every stroke, would make it
rebuild its engine again and again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BundleError

if TYPE_CHECKING:
    from ..contract.bundle import Bundle

Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
MAX_BATCH = 8  # the server's default encoder batch (serve --max-batch) and `engines --max-batch`
PHOTO_MAX_SIDE = 896


def graph_profiles(bundle: Bundle, *, max_batch: int = MAX_BATCH, max_strokes: int | None = None,
                   photo_max_side: int = PHOTO_MAX_SIDE, opt_batch: int | None = None) -> dict[str, dict[str, Shapes]]:
    """(min, opt, max) shape per dynamic input of each graph of ``bundle``: what the runtime feeds.

    The inputs and their symbolic dims come from the bundle's graph specs: a batch N of 1..max_batch
    (a server batches strokes of several sessions up to its --max-batch, a gallery build batches
    photos), a stroke count T of 1..max_strokes (0.. for the stroke caches, which start empty),
    photo sides H, W from the photo recipe's shorter side up to ``photo_max_side``. TensorRT tunes
    kernels for the opt shape: batch ``opt_batch`` (default: ``max_batch``, the serving batch; a
    single-user device passes 1).
    """
    t = max_strokes or bundle.max_strokes
    side = bundle.photo_recipe.resize_shorter_side
    opt = min(max_batch, opt_batch or max_batch)
    out: dict[str, dict[str, Shapes]] = {}
    for graph in bundle.manifest["graphs"]:
        spec = bundle.graph_spec(graph)
        symbols = {"N": (1, opt, max_batch), "H": (side, side, photo_max_side),
                   "W": (side, side * 4 // 3, photo_max_side)}
        for name, dims in spec.inputs.items():
            if all(isinstance(d, int) for d in dims):
                continue
            ranges = {**symbols, "T": (0 if name in spec.state else 1, min(16, t), t)}
            unknown = [d for d in dims if not isinstance(d, int) and d not in ranges]
            if unknown:
                raise BundleError(f"{graph}.{name} has a dimension {unknown[0]!r} no profile covers",
                                  path=bundle.path, hint="this bundle was written by a newer dcssa-export: upgrade dcssa-rt")
            per = [(d, d, d) if isinstance(d, int) else ranges[d] for d in dims]
            out.setdefault(graph, {})[name] = tuple(tuple(r[k] for r in per) for k in range(3))
    return out


def ort_trt_options(profile: dict[str, Shapes]) -> dict[str, str]:
    """``trt_profile_{min,opt,max}_shapes`` provider options ("name:1x3x299x299,other:0x2048")."""
    if not profile:
        return {}
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    return {key: ",".join(f"{name}:{'x'.join(str(d) for d in shapes[k])}" for name, shapes in profile.items())
            for k, key in enumerate(keys)}

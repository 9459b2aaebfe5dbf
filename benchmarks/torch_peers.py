"""The PyTorch methods of ``dcssa-bench run``: research code's pattern, and the peers a PyTorch user would pick.

Every method uses the checkpoint the bundle was exported from and the bundle's own canvas and
preprocessing, on the same strokes as our runtime: only the way the model runs differs.

* ``naive``: at stroke t rasterise and encode all t partial sketches again, then the full head (ARNet,
  which has no head: rasterise the whole partial sketch again and encode it); eager fp32.
* ``torch-eager``: one encoder pass per stroke on the kept canvas, then the head on the feature
  prefix; eager fp32 under ``inference_mode``. Every peer below is this loop with another encoder.
* ``torch-channels-last``: model and input in ``torch.channels_last`` (NHWC), the usual first step for
  a convolution net on CPU (oneDNN's convolutions run without layout reorders). DC-SSA only: ARNet's
  ViT has one convolution (the 16x16 patch embedding) and then multiplies (tokens x width) matrices,
  which have no memory format, so this peer would time ``torch-eager`` again; it is left out there
  and the report says why.
* ``torch-bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around encoder and head, with the
  DC-SSA model and input in channels_last (ARNet: autocast alone, for the reason above); features and
  embedding are cast back to float32 for the search. Only on a CPU with native bf16 (``avx512_bf16``
  or ``amx_bf16`` in /proc/cpuinfo): elsewhere oneDNN emulates bf16 with fp32 arithmetic, and the
  peer would time a slow path nobody would pick; it is left out with that reason.
* ``torch-compile``: ``torch.compile`` of the encoder (default mode, inductor's CPU backend), fp32.
  Its first call traces, generates and builds C++ kernels: that wall time is ``first_call_ms``,
  reported apart from the per-stroke medians; the call is made before the warm-up, so the timed
  strokes run the compiled code. The compile starts from an empty inductor cache (a fresh folder),
  so the number is what a first deployment pays; a later process on the same machine pays less. If
  the compile fails here (no C++ compiler, an unsupported Python), the peer is left out with the
  error.

The first call of every peer is timed the same way (``first_call_ms``), so compile cost can be read
against a plain first call.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dcssa.benchmarks.env import cpu_flags
from dcssa.benchmarks.methods import PEERS, Method
from dcssa.runtime import Bundle, Gallery
from dcssa.runtime.stroke.parse import strokes_to_points
from dcssa.runtime.stroke.pipeline import SketchPipeline

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
TOP_K = 10


def method_name(peer: str) -> str:
    return f"torch-{peer}"


def native_bf16() -> list[str]:
    """The CPU flags that give native bf16 arithmetic here (empty: none)."""
    flags = cpu_flags()
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def cxx_compiler() -> str | None:
    """A C++ compiler on PATH (inductor's CPU backend builds its kernels with one), or None."""
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        if shutil.which(name):
            return name
    return None


@dataclass
class TorchMethods:
    """The PyTorch methods that could be built, what each peer is, and the peers left out with why."""

    methods: list[Method] = field(default_factory=list)
    #: method name -> {"setup": what runs, "first_call_ms": wall time of the first encoder call, ...}
    peers: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class _Family:
    """What differs between DC-SSA and ARNet: the encoder module, how features become an embedding."""

    encoder: nn.Module  # preprocessed raster (1, 3, H, W) -> feature (1, F)
    finish: Callable[[list[torch.Tensor]], torch.Tensor]  # features of strokes 1..t -> embedding (E,)
    naive: Callable[[int], torch.Tensor]  # stroke t (0-based) -> embedding, the research-code way
    conv_net: bool  # channels_last means something for it
    model: nn.Module | None = None  # every module the family runs (gpu-check moves it to the GPU)


class _SketchEncoder(nn.Module):
    """DC-SSA's sketch branch up to the head: Inception trunk, then spatial attention (the model's ``sketch_feature``)."""

    def __init__(self, trunk: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.trunk, self.attention = trunk, attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.trunk(x))


def _dcssa(bundle: Bundle, ckpt, sketch: list[np.ndarray]) -> _Family:
    from dcssa.export.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt, num_heads=bundle.heads).model.eval()
    pipe = SketchPipeline(bundle.sketch_recipe)

    def head(feats: torch.Tensor) -> torch.Tensor:
        return model.attn(feats) if bundle.phase == 2 else model.sketch_linear(feats)

    def naive(t: int) -> torch.Tensor:
        rasters = np.concatenate([pipe.preprocess(pipe.rasterize(strokes_to_points(sketch[: i + 1])))
                                  for i in range(t + 1)])
        return head(model.sketch_feature(torch.from_numpy(rasters)))[-1]

    return _Family(_SketchEncoder(model.sketch_embedding_network, model.sketch_attention),
                   lambda feats: head(torch.cat(feats))[-1], naive, conv_net=True, model=model)


def _arnet(bundle: Bundle, ckpt, sketch: list[np.ndarray]) -> _Family:
    from dcssa.export.arnet import load_arnet_checkpoint

    path = ckpt[0] if isinstance(ckpt, (list, tuple)) else ckpt
    model = load_arnet_checkpoint(path, num_heads=bundle.heads).sketch.eval()
    pipe = SketchPipeline(bundle.sketch_recipe)

    def naive(t: int) -> torch.Tensor:
        return model(torch.from_numpy(pipe.preprocess(pipe.rasterize(strokes_to_points(sketch[: t + 1])))))[0]

    return _Family(model, lambda feats: feats[-1][0], naive, conv_net=False, model=model)


def model_family(bundle: Bundle, ckpt, sketch: list[np.ndarray]) -> _Family:
    """The PyTorch model of ``bundle``'s family, split as every peer uses it (also gpu-check's CUDA peers)."""
    return (_arnet if bundle.family == "arnet" else _dcssa)(bundle, ckpt, sketch)


@dataclass
class _Variant:
    """One peer: its encoder, how an input is laid out for it, whether it runs under bf16 autocast."""

    name: str
    setup: str
    encoder: Callable[[torch.Tensor], torch.Tensor]
    channels_last: bool = False
    bf16: bool = False

    def context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def to_input(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t


def _peer_method(v: _Variant, fam: _Family, pipe, sketch: list[np.ndarray], search) -> Method:
    """``torch-eager``'s loop with the peer's encoder: one pass per stroke on the kept canvas, then the head."""
    state: dict = {}

    def start() -> None:
        state["canvas"] = pipe.canvas()
        state["feats"] = []

    def stroke(t: int) -> object:
        state["canvas"].add_stroke(sketch[t])
        x = v.to_input(pipe.preprocess(state["canvas"].image))
        with torch.inference_mode(), v.context():
            state["feats"].append(v.encoder(x).float())
            e = fam.finish(state["feats"]).float()
        return e, search(e)

    return Method(v.name, start, stroke)


def _first_call_ms(v: _Variant, pipe, sketch: list[np.ndarray]) -> float:
    """Wall time of the variant's first encoder call, on the canvas of stroke 1 (torch-compile: compiles)."""
    canvas = pipe.canvas()
    canvas.add_stroke(sketch[0])
    x = v.to_input(pipe.preprocess(canvas.image))
    t0 = time.perf_counter()
    with torch.inference_mode(), v.context():
        v.encoder(x)
    return (time.perf_counter() - t0) * 1e3


@contextlib.contextmanager
def _fresh_inductor_cache():
    """Inductor's on-disk caches in an empty folder for the duration (a first compile, not a cache hit).

    The compiled kernels stay loaded after the folder is gone; later calls do not look them up again.
    """
    with tempfile.TemporaryDirectory(prefix="dcssa-inductor-") as tmp:
        try:
            from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir  # also clears in-memory caches
        except ImportError:  # an older torch: the variable alone (read at each lookup)
            old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
            try:
                yield tmp
            finally:
                if old is None:
                    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
                else:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
            return
        with temporary_cache_dir(tmp):
            yield tmp


def _variants(fam: _Family, peers: tuple[str, ...], out: TorchMethods) -> list[_Variant]:
    """The requested peers that can run here; the others go to ``out.skipped`` with the reason."""
    found = []
    copies: dict[str, nn.Module] = {}

    def channels_last() -> nn.Module:  # one NHWC copy of the weights, shared by channels-last and bf16
        if "cl" not in copies:
            copies["cl"] = copy.deepcopy(fam.encoder).to(memory_format=torch.channels_last)
        return copies["cl"]

    for peer in peers:
        name = method_name(peer)
        if peer == "eager":
            found.append(_Variant(name, "eager fp32 (inference_mode)", fam.encoder))
        elif peer == "channels-last":
            if not fam.conv_net:
                out.skipped[name] = ("not applicable: a ViT has one convolution (patch embedding) and then works on "
                                     "token matrices without a memory format; it would time torch-eager again")
                continue
            found.append(_Variant(name, "eager fp32, model and input in torch.channels_last", channels_last(),
                                  channels_last=True))
        elif peer == "bf16":
            flags = native_bf16()
            if not flags:
                out.skipped[name] = (f"this CPU has no native bf16 (none of {', '.join(NATIVE_BF16_FLAGS)} in "
                                     "/proc/cpuinfo): autocast would emulate bf16, slower than fp32")
                continue
            how = f"torch.autocast('cpu', bfloat16){' + channels_last' if fam.conv_net else ''}, " \
                  f"embedding cast to float32 (CPU: {' '.join(flags)})"
            found.append(_Variant(name, how, channels_last() if fam.conv_net else fam.encoder,
                                  channels_last=fam.conv_net, bf16=True))
        elif peer == "compile":
            found.append(_Variant(name, "torch.compile(encoder), mode default, backend inductor (CPU), fp32",
                                  torch.compile(fam.encoder)))
        else:
            raise ValueError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
    return found


def torch_methods(bundle: Bundle, ckpt, gallery: Gallery, sketch: list[np.ndarray], threads: int | None,
                  peers: tuple[str, ...] = PEERS) -> TorchMethods:
    """``naive`` and the requested peers, built from the checkpoint (needs the [export] extra).

    Each peer's first encoder call is made and timed here (``peers[name]["first_call_ms"]``); a peer
    whose first call fails (torch-compile without a C++ compiler, ...) is left out with the error.
    """
    if threads:
        torch.set_num_threads(threads)
    fam = model_family(bundle, ckpt, sketch)
    pipe = SketchPipeline(bundle.sketch_recipe)  # the runtime's own canvas and preprocessing: only the model differs
    photos = torch.from_numpy(np.array(gallery.embeddings, np.float32))  # a copy: the gallery is a read-only memmap

    def search(e: torch.Tensor):
        return torch.topk(photos @ e, min(TOP_K, len(photos)))

    def naive_stroke(t: int) -> object:
        with torch.inference_mode():
            e = fam.naive(t)
        return e, search(e)

    out = TorchMethods(methods=[Method("naive", lambda: None, naive_stroke)])
    for v in _variants(fam, tuple(peers), out):
        info: dict = {"setup": v.setup}
        try:
            if v.name == method_name("compile"):
                with _fresh_inductor_cache():
                    info["first_call_ms"] = round(_first_call_ms(v, pipe, sketch), 1)
                info["inductor_cache"] = "empty at the first call (a first compile)"
            else:
                info["first_call_ms"] = round(_first_call_ms(v, pipe, sketch), 1)
        except Exception as exc:  # noqa: BLE001 - report the peer as absent, with why
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if v.name == method_name("compile") and cxx_compiler() is None:
                why = f"no C++ compiler on PATH (inductor's CPU backend needs one): {why}"
            out.skipped[v.name] = f"{type(exc).__name__}: {why}"
            continue
        out.peers[v.name] = info
        out.methods.append(_peer_method(v, fam, pipe, sketch, search))
    return out


def agreement(reference: list, other: list) -> dict:
    """How a peer's outputs (per stroke: embedding, top-k) compare with the reference's, stroke by stroke."""
    diffs, top1, overlap = [], [], []
    for (e_ref, k_ref), (e, k) in zip(reference, other):
        diffs.append(float((e_ref.float() - e.float()).abs().max()))
        ids_ref, ids = k_ref.indices.tolist(), k.indices.tolist()
        top1.append(ids_ref[0] == ids[0])
        overlap.append(len(set(ids_ref) & set(ids)) / len(ids_ref))
    return {"max_abs_embedding_diff": float(np.max(diffs)), "top1_same": float(np.mean(top1)),
            f"top{TOP_K}_overlap": float(np.mean(overlap))}

"""Load the authors' checkpoint files into :class:`~dcssa.export.model.DCSSA`.

Three layouts exist in the wild (SPEC section 3): the phase-2 full state_dict, the phase-1 split
trio (backbone / attention / linear files) and the phase-1 full state_dict. All are pickles, so
they are read with ``weights_only=True``: a file that needs arbitrary code to unpickle is refused.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcssa.export.model import DCSSA, DEFAULT_HEADS
from dcssa.runtime.contract.bundle import sha256_file
from dcssa.runtime.errors import DcssaError

# Keys the authors' loaders silently skip (strict=False); real files carry them.
HARMLESS_SUFFIXES = ("num_batches_tracked",)
HARMLESS_PARTS = (".fc.", ".AuxLogits.")
SPLIT_GROUPS = {
    "backbone": ("sample_embedding_network", "sketch_embedding_network"),
    "attention": ("attention", "sketch_attention"),
    "linear": ("linear", "sketch_linear"),
}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Written by `dcssa-export demo-checkpoint` beside the authors' keys (their loaders use strict=False
# and skip it); bundles exported from such a file are marked demo.
DEMO_MARKER_KEY = "dcssa_demo_checkpoint"


class CheckpointError(DcssaError):
    """A checkpoint that cannot be read or does not match the DC-SSA layout."""


@dataclass
class LoadedCheckpoint:
    model: DCSSA
    layout: str  # "phase2-full", "phase1-full" or "phase1-split"
    phase: int
    embed: int
    files: list[dict] = field(default_factory=list)  # name, sha256, bytes
    ignored_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    demo: bool = False


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive since torch 1.6
READ_HINT = ("pass the .pth file torch.save() wrote; if it was copied or downloaded, copy it again and compare its "
             "size and sha256 with the original")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def read_pickle(path: Path) -> object:
    """``torch.load`` with ``weights_only=True`` and errors that say what is wrong with the file.

    torch reports a text file, a truncated archive and a pickle that wants to run code with the
    same few exception types; the file itself tells them apart (see :func:`_unsafe_imports`).
    """
    if not path.is_file():
        raise CheckpointError("no such file", path=path, hint="pass the .pth file written by the training code")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage bytes raise KeyError, EOFError, RuntimeError, ...
        unsafe = _unsafe_imports(path)
        if unsafe:
            raise CheckpointError(
                "refused: the file needs more than tensors and plain containers to unpickle "
                f"(it would run code from the file: it imports {', '.join(unsafe[:3])})",
                path=path,
                hint="re-save it from a trusted environment with torch.save(model.state_dict(), path)",
            ) from None
        raise CheckpointError(f"is not a readable PyTorch checkpoint: {_why_unreadable(path, exc)}", path=path,
                              hint=READ_HINT) from None


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """What the bytes are instead of a checkpoint, in the user's terms."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty (0 bytes)"
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return "a zip archive cut short (its end, the central directory, is missing): the file is truncated"
        return "a zip archive, but not one torch.save() wrote (no data.pkl in it)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is text ({text.splitlines()[0][:40]!r}...), not torch.save() data"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy file, not torch.save() data"
    with open(path, "rb") as f:
        if _pickle_globals(f) is not None and not f.read(1):  # one whole pickle, nothing after it
            return "a plain pickle (pickle.dump), not torch.save() data"
    if isinstance(exc, pickle.UnpicklingError):  # torch's text here is about weights_only, not about the file
        return f"truncated, or another format (it starts with bytes {head[:8].hex(' ')})"
    detail = str(exc).splitlines()[0] if str(exc) else "the data ends too early"
    return f"truncated, or another format ({type(exc).__name__}: {detail[:160]})"


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _allowed_globals() -> set[str]:
    """What ``torch.load(weights_only=True)`` imports by itself (a private torch function; empty if it moves,
    which only makes the refusal stricter)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - another torch
        return set()


def _pickle_globals(f) -> list[str] | None:
    """The globals one pickle stream in ``f`` imports, read opcode by opcode (nothing is executed);
    None when the bytes are not one whole pickle."""
    names: list[str] = []
    strings: list[object] = []  # what string-pushing opcodes pushed, for STACK_GLOBAL's operands
    memo: dict[object, object] = {}
    last: object = None  # the newest pushed value when it is a string
    try:
        for op, arg, _pos in pickletools.genops(f):
            if op.name in _PUT_OPS or op.name == "MEMOIZE":
                memo[arg if op.name != "MEMOIZE" else len(memo)] = last
                continue
            last = arg if op.name in _STRING_OPS else memo.get(arg) if op.name in _GET_OPS else None
            if last is not None:
                strings.append(last)
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                mod, name = (strings[-2:] if len(strings) >= 2 else [None, None])
                names.append(f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str) else "an unnamed global")
    except Exception:  # noqa: BLE001 - pickletools raises ValueError, but odd bytes may raise others
        return None
    return names


def _unsafe_imports(path: Path) -> list[str]:
    """Globals beyond torch's weights-only set that the file's complete pickles import ([]: none, or no pickle).

    A torch.save archive keeps its pickle in ``*/data.pkl``; a legacy torch file or a plain pickle is a
    sequence of pickles at the start of the file (then raw tensor data, where parsing stops).
    """
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for member in (n for n in zf.namelist() if n.endswith("data.pkl")):
                    with zf.open(member) as f:
                        found += _pickle_globals(f) or []
        elif not _starts_with(path, ZIP_MAGIC):  # a zip cut short is no pickle
            with open(path, "rb") as f:
                for _ in range(5):  # legacy format: magic number, protocol, sys info, the objects, storage keys
                    names = _pickle_globals(f)
                    if names is None:
                        break
                    found += names
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    allowed = _allowed_globals()
    return list(dict.fromkeys(n for n in found if n not in allowed))


def _as_state_dict(obj: object, path: Path) -> dict[str, object]:
    if isinstance(obj, Mapping):
        # {'state_dict': sd, 'epoch': ...} style wrappers around a flat state_dict
        if not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in WRAPPER_KEYS:
                inner = obj.get(key)
                if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                    return dict(inner)
        return dict(obj)
    raise CheckpointError(
        f"holds a {type(obj).__name__}, not a state_dict",
        path=path,
        hint="save the weights with torch.save(model.state_dict(), path)",
    )


def _strip_module(sd: dict[str, object]) -> dict[str, object]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _split_kind(sd: Mapping[str, object]) -> str | None:
    """Which split file of the phase-1 trio this is, or None for a flat state_dict."""
    keys = set(sd)
    for kind, groups in SPLIT_GROUPS.items():
        if keys and keys <= set(groups) and all(isinstance(sd[g], Mapping) for g in keys):
            return kind
    return None


def _gather(paths: Sequence[Path]) -> tuple[dict[str, object], str, list[dict]]:
    """Read one file or the trio into one flat state_dict with the section-1 prefixes."""
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        found = []
        for kind in SPLIT_GROUPS:
            hits = sorted(folder.glob(f"*_{kind}.pth"))
            if len(hits) != 1:
                raise CheckpointError(
                    f"expected exactly one '*_{kind}.pth' file in the folder, found {len(hits)}",
                    path=folder,
                    hint="pass the three phase-1 files (<DS>_top5_backbone.pth, _attention.pth, _linear.pth) explicitly",
                )
            found.append(hits[0])
        paths = found
    files = []
    merged: dict[str, object] = {}
    kinds = []
    for path in paths:
        raw = _as_state_dict(read_pickle(path), path)
        files.append({"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
        kind = _split_kind(raw)
        if kind is None and len(paths) > 1:
            raise CheckpointError(
                "is a flat state_dict, but several files were given",
                path=path,
                hint="several files are only for the phase-1 split trio (backbone, attention, linear)",
            )
        if kind is None:
            return _strip_module(raw), "", files
        kinds.append(kind)
        for group, sub in raw.items():
            for k, v in _strip_module(dict(sub)).items():
                merged[f"{group}.{k}"] = v
    missing_files = [k for k in SPLIT_GROUPS if k not in kinds]
    if missing_files:
        raise CheckpointError(
            f"the phase-1 split layout needs the {', '.join(missing_files)} file(s) too",
            path=paths[0],
            hint="pass the folder holding all three files, or all three paths",
        )
    return merged, "phase1-split", files


def _is_harmless(key: str) -> bool:
    return key.endswith(HARMLESS_SUFFIXES) or any(p in f".{key}" for p in HARMLESS_PARTS)


def _check_keys(model: DCSSA, tensors: Mapping[str, torch.Tensor], where: Path, *, phase_hint: bool) -> dict:
    """The model's required tensors; missing keys or wrong shapes are a CheckpointError naming them."""
    expected = {k: v for k, v in model.state_dict().items() if not _is_harmless(k)}
    missing = sorted(k for k in expected if k not in tensors)
    if missing:
        shown = ", ".join(missing[:12]) + (f" ... ({len(missing)} in all)" if len(missing) > 12 else "")
        hint = (
            "this looks like a phase-1 checkpoint; drop --phase 2"
            if phase_hint
            else "the file does not match the DC-SSA layout of SPEC section 1"
        )
        raise CheckpointError(f"missing keys: {shown}", path=where, hint=hint)
    wrong = [
        f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            "tensor shapes do not match the model: " + "; ".join(wrong[:6]),
            path=where,
            hint="is this checkpoint from an Inception-v3 DC-SSA model?",
        )
    return expected


def load_checkpoint(
    paths: str | Path | Sequence[str | Path],
    *,
    num_heads: int = DEFAULT_HEADS,
    phase: int | None = None,
) -> LoadedCheckpoint:
    """Build the model and load the checkpoint into it; missing keys are an error that names them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise CheckpointError("no checkpoint given", hint="pass --ckpt model.pth")
    sd, layout, files = _gather(paths)
    where = paths[0] if len(paths) == 1 else paths[0].parent
    demo = DEMO_MARKER_KEY in sd
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and k != DEMO_MARKER_KEY}
    if not tensors:
        raise CheckpointError("contains no tensors", path=where, hint="is this a model checkpoint?")
    detected = 2 if any(k.startswith("attn.") for k in tensors) else 1
    phase = detected if phase is None else phase
    if not layout:
        layout = f"phase{phase}-full"
    try:
        embed = int(tensors["linear.head_layer.weight"].shape[0])
    except KeyError:
        raise CheckpointError(
            "missing key 'linear.head_layer.weight' (the photo projection), so this is not a DC-SSA checkpoint",
            path=where,
            hint="expected keys such as sample_embedding_network.*, attention.*, linear.head_layer.*",
        ) from None
    model = DCSSA(embed=embed, num_heads=num_heads, phase=phase)
    expected = _check_keys(model, tensors, where, phase_hint=phase == 2 and detected == 1)
    # Optional buffers the model has (num_batches_tracked) are loaded when the file carries them,
    # as the authors' strict=False loaders do, so the model holds every tensor of the file it uses.
    optional = {
        k for k, v in model.state_dict().items()
        if k not in expected and k in tensors and tuple(tensors[k].shape) == tuple(v.shape)
    }
    ignored = sorted(k for k in tensors if k not in expected and k not in optional and _is_harmless(k))
    extra = sorted(k for k in tensors if k not in expected and not _is_harmless(k))
    if phase == 1:  # a phase-2 file exported as phase 1 carries the head: not an error
        extra = [k for k in extra if not k.startswith("attn.")]
    model.load_state_dict({k: tensors[k] for k in [*expected, *optional]}, strict=False)
    model.eval()
    return LoadedCheckpoint(
        model=model,
        layout=layout,
        phase=phase,
        embed=embed,
        files=files,
        ignored_keys=ignored,
        unexpected_keys=extra,
        demo=demo,
    )

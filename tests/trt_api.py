"""The real TensorRT Python API surfaces this machine can read, and a recorder of what our code uses.

* TensorRT 10.13: the ``tensorrt-stubs`` wheel (type stubs of the bindings: every class and its
  members, base classes included), read with ``ast``.
* TensorRT 11.4: the ``tensorrt-cu13-bindings`` wheel, never imported (its ``libs`` dependency is
  not fetchable): the names compiled into ``tensorrt_bindings/tensorrt.so`` (its identifier strings;
  the linker merges a string into the tail of a longer one, so a name counts when an identifier
  ends with it) plus the names its ``__init__.py`` defines. Owner classes are not recoverable from a
  binary, so this surface answers by name only.

Both wheels are fetched once with ``pip download`` into ``$DCSSA_TRT_API_CACHE`` (default
``~/.cache/dcssa-trt-api``); without network the tests that need them skip, saying so.

:class:`Recorder` wraps the ``tensorrt`` stand-in so every attribute our code reads or sets on a
TensorRT object is recorded as (stub class, name).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

STUBS = ("tensorrt-stubs", "10.13.0.35.1")
BINDINGS = ("tensorrt-cu13-bindings", "11.4.0.106")
CACHE = Path(os.environ.get("DCSSA_TRT_API_CACHE", Path.home() / ".cache" / "dcssa-trt-api"))
MODULE = "tensorrt"


def wheel(dist: str, version: str) -> Path:
    """The wheel file, downloaded once (raises RuntimeError saying why it cannot be had)."""
    folder = CACHE / f"{dist}-{version}"
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                           f"{dist}=={version}"], capture_output=True, text=True, timeout=600)
    found = sorted(folder.glob("*.whl"))
    if proc.returncode or not found:
        raise RuntimeError(f"pip download {dist}=={version} failed: {proc.stderr.strip()[-300:]}")
    return found[0]


@dataclass
class StubSurface:
    """Classes of the stubs: members (own) and bases; module-level names."""

    members: dict[str, set[str]] = field(default_factory=dict)
    bases: dict[str, list[str]] = field(default_factory=dict)
    module: set[str] = field(default_factory=set)

    def has(self, owner: str, name: str) -> bool:
        if owner == MODULE:
            return name in self.module
        seen, todo = set(), [owner]
        while todo:
            cls = todo.pop()
            if cls in seen or cls not in self.members:
                continue
            seen.add(cls)
            if name in self.members[cls]:
                return True
            todo += self.bases.get(cls, [])
        return False


def _names(body) -> set[str]:
    out = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"}
    return out


CLASS = re.compile(r"^(\s*)class (\w+)(?:\((.*)\))?\s*:")
MEMBER = re.compile(r"^(\s*)(?:def (\w+)\s*\(|(\w+)\s*[:=])")


def _read_stub(text: str, s: StubSurface) -> None:
    """Classes, their bases and members, and module names, by indentation (the generated stubs do
    not all parse with ``ast``: pybind11 signatures such as defaults before non-defaults)."""
    stack: list[tuple[int, str]] = []  # (indent of the class line, class name)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "@", '"', "'")):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and indent <= stack[-1][0]:
            stack.pop()
        if (m := CLASS.match(line)):
            name = m.group(2)
            (s.members[stack[-1][1]] if stack else s.module).add(name)
            s.members.setdefault(name, set())
            s.bases.setdefault(name, []).extend(b.strip().split(".")[-1] for b in (m.group(3) or "").split(",") if b.strip())
            stack.append((indent, name))
        elif (m := MEMBER.match(line)):
            member = m.group(2) or m.group(3)
            if stack and indent > stack[-1][0]:
                s.members[stack[-1][1]].add(member)
            elif not stack and indent == 0:
                s.module.add(member)
        elif indent == 0 and line.startswith(("from ", "import ")):
            s.module |= {n.strip().split(" as ")[-1] for n in line.split("import", 1)[1].split(",") if "*" not in n}


def stub_surface(whl: Path) -> StubSurface:
    s = StubSurface()
    with zipfile.ZipFile(whl) as z:
        for name in ("tensorrt_bindings/tensorrt.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt/__init__.pyi"):
            _read_stub(z.read(name).decode(), s)
    return s


@dataclass
class NameSurface:
    """Names compiled into a binary (plus its Python module's): answers by name only."""

    identifiers: set[str]
    python: set[str]

    def has(self, owner: str, name: str) -> bool:
        if name in self.python or name in self.identifiers:
            return True
        return any(i.endswith(name) for i in self.identifiers)  # tail-merged by the linker


IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{2,}")


def binary_surface(whl: Path) -> NameSurface:
    with zipfile.ZipFile(whl) as z:
        so = next(n for n in z.namelist() if n.startswith("tensorrt_bindings/tensorrt") and ".so" in n)
        blob = z.read(so)
        init = z.read("tensorrt_bindings/__init__.py").decode()
    # C strings: NUL-terminated runs; keep those that are whole identifiers
    idents = {m.decode() for m in (part.strip() for part in blob.split(b"\0")) if IDENT.fullmatch(m)}
    tree = ast.parse(init)
    return NameSurface(idents, _names(tree.body))


def missing(used: set[tuple[str, str]], surface) -> list[str]:
    """Every (owner, name) of ``used`` the surface lacks, as "owner.name"."""
    return sorted(f"{o}.{n}" for o, n in used if not surface.has(o, n))


# -- recording what our code touches ---------------------------------------------------------------

#: (owner, callable) -> the stub class of what it returns (None: a plain value, not followed)
RETURNS = {
    (MODULE, "Logger"): "Logger", (MODULE, "Runtime"): "Runtime", (MODULE, "Builder"): "Builder",
    (MODULE, "OnnxParser"): "OnnxParser",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine", ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("Builder", "create_network"): "INetworkDefinition", ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache", ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("INetworkDefinition", "get_input"): "ITensor",
}
#: module attributes read as classes (enum-like ones, or a class probed for a method with hasattr):
#: their members are recorded under the class name
CLASSES = {"NetworkDefinitionCreationFlag", "TensorIOMode", "DataType", "BuilderFlag", "MemoryPoolType",
           "ExecutionContextAllocationStrategy", "Logger", "IExecutionContext"}


def _raw(value):
    return object.__getattribute__(value, "_target") if isinstance(value, Rec) else value


class Rec:
    """A TensorRT object seen through the recorder: reads, writes and calls are logged as (owner, name)."""

    def __init__(self, target, owner: str, log: set, call_owner: str | None = None) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_call_owner", call_owner)

    def __getattr__(self, name: str):
        owner, log = object.__getattribute__(self, "_owner"), object.__getattribute__(self, "_log")
        value = getattr(object.__getattribute__(self, "_target"), name)  # AttributeError: not recorded (hasattr)
        log.add((owner, name))
        returns = RETURNS.get((owner, name))
        if owner == MODULE and name in CLASSES:
            return Rec(value, name, log, call_owner=returns)
        if returns is not None or callable(value):
            return Rec(value, f"{owner}.{name}()", log, call_owner=returns)
        return value

    def __setattr__(self, name: str, value) -> None:
        object.__getattribute__(self, "_log").add((object.__getattribute__(self, "_owner"), name))
        setattr(object.__getattribute__(self, "_target"), name, value)

    def __call__(self, *args, **kwargs):
        result = object.__getattribute__(self, "_target")(*[_raw(a) for a in args],
                                                           **{k: _raw(v) for k, v in kwargs.items()})
        owner = object.__getattribute__(self, "_call_owner")
        if owner is None or result is None:
            return result
        return Rec(result, owner, object.__getattribute__(self, "_log"))


def recorder(trt) -> tuple[Rec, set]:
    """The stand-in module behind a recorder, and the set it fills."""
    log: set = set()
    return Rec(trt, MODULE, log), log

"""Install only what gpu-check needs and this machine lacks (``make gpu-check`` runs it as a file).

Standard library only: it runs before the project is installed, in a venv made with
``--system-site-packages`` so the machine's own TensorRT (JetPack's ``python3-libnvinfer``, an NGC
container's), PyTorch (JetPack's or the CUDA wheel) and onnxruntime-gpu stay in use. It installs the
project without its dependencies, then each requirement of the runtime and the exporter that
nothing installed satisfies, with these rules:

* ``onnxruntime`` is satisfied by ``onnxruntime-gpu`` (installing the CPU wheel beside it would
  shadow the GPU one: they share the module name);
* any installed ``torch`` / ``torchvision`` is kept whatever its version (JetPack's builds are
  their own); a missing one is NOT installed (gigabytes; the right wheel depends on the platform):
  the stages that need it are skipped and the report says how to add it;
* with TensorRT present and no CUDA bindings, ``cuda-bindings`` of the driver's CUDA major;
* ``polygraphy`` (pure Python, half a megabyte) for the second-opinion stage.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEEP_ANY_VERSION = {"torch", "torchvision"}
NEVER_INSTALL = {"torch", "torchvision"}
SATISFIED_BY = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}
EXTRAS = ("export",)


def _load_probe():
    spec = importlib.util.spec_from_file_location("dcssa_gpu_probe", Path(__file__).with_name("probe.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _toml(path: Path) -> dict:
    try:
        import tomllib  # 3.11+
    except ImportError:  # 3.10 (JetPack 6): pip's own copy
        from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text())


def requirements(pyproject: Path, extras=EXTRAS) -> list[str]:
    """The runtime's dependencies and those of ``extras``, as written in pyproject.toml."""
    project = _toml(pyproject)["project"]
    out = list(project.get("dependencies", []))
    for extra in extras:
        out += project.get("optional-dependencies", {}).get(extra, [])
    return out


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _satisfied(req: str, installed: dict[str, str]) -> bool:
    from pip._vendor.packaging.requirements import Requirement

    r = Requirement(req)
    if r.marker is not None and not r.marker.evaluate():
        return True  # not for this platform
    name = _name(req)
    for dist in SATISFIED_BY.get(name, (name,)):
        version = installed.get(dist)
        if version is None:
            continue
        if name in KEEP_ANY_VERSION or dist != name or r.specifier.contains(version, prereleases=True):
            return True
    return False


def plan(reqs: list[str], installed: dict[str, str], *, tensorrt: bool, driver_major: int | None) -> tuple[list[str], list[str]]:
    """(pip requirements to install, notes on what is left out and why)."""
    todo, notes = [], []
    for req in reqs:
        if _satisfied(req, installed):
            continue
        if _name(req) in NEVER_INSTALL:
            notes.append(f"{_name(req)} is not installed and is not installed here (the right wheel depends on the "
                         "platform: the CUDA wheel from pytorch.org, or JetPack's from pypi.jetson-ai-lab.io): "
                         "the PyTorch stages and making the demo bundle are skipped")
            continue
        todo.append(req)
    has_bindings = any(d in installed for d in ("cuda-bindings", "cuda-python", "pycuda"))
    if tensorrt and not has_bindings:
        if driver_major:
            todo.append(f"cuda-bindings=={driver_major}.*")
        else:
            notes.append("TensorRT is installed but no CUDA bindings, and the driver's CUDA version is unknown")
    if "polygraphy" not in installed:
        todo.append("polygraphy")
    return todo, notes


def installed_dists() -> dict[str, str]:
    return {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version for d in md.distributions()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="Print the pip commands instead of running them.")
    args = parser.parse_args(argv)
    probe = _load_probe()
    found = probe.probe()
    driver_major = int(found.driver.version.split(".")[0]) if found.driver.version else None
    todo, notes = plan(requirements(ROOT / "pyproject.toml"), installed_dists(),
                       tensorrt=bool(found.packages.get("tensorrt")), driver_major=driver_major)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    commands = [[*pip, "--no-deps", "-e", str(ROOT)]] + ([[*pip, *todo]] if todo else [])
    for line in notes + [f"onnxruntime: {found.onnxruntime_note()}"]:
        print(f"gpu-check install: {line}", file=sys.stderr)
    for cmd in commands:
        print("gpu-check install: $ " + " ".join(cmd), file=sys.stderr, flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The architecture as checks that fail: the import contract (.importlinter), no reaching into
another module's private names, short functions, and the old import paths kept for one release."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"runtime": "dcssa.runtime", "export": "dcssa.export", "calibration": "dcssa.calibration",
            "benchmarks": "dcssa.benchmarks"}
#: functions allowed over MAX_LINES in runtime/ and calibration/, each with the reason it reads better whole
LONG_FUNCTIONS: dict[str, str] = {}
MAX_LINES = 60


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts).removesuffix(".__init__")


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install 'dcssa-rt[dev]')")
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_import_contract_holds():
    """runtime never imports export, calibration, benchmarks or torch; its layers point down; no cycles."""
    proc = _lint_imports()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert ", 0 broken." in proc.stdout.split("Contracts: ")[-1].split("\n")[0]


def test_the_contract_fails_on_a_forbidden_import(tmp_path):
    """The check can fail: the same contracts on a copy of the runtime with one upward import added."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install 'dcssa-rt[dev]')")
    tree = tmp_path / "dcssa"
    for folder, name in PACKAGES.items():
        shutil.copytree(ROOT / folder, tree / name.split(".")[1], ignore=shutil.ignore_patterns("__pycache__"))
    head = tree / "runtime" / "stroke" / "head.py"
    head.write_text(head.read_text() + "\nfrom dcssa.runtime.indexing import build  # deliberately forbidden\n")
    proc = subprocess.run([exe, "--no-cache", "--config", str(ROOT / ".importlinter")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "dcssa.runtime.stroke.head -> dcssa.runtime.indexing.build" in proc.stdout


def _private_imports(path: Path) -> list[str]:
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not source.startswith("dcssa"):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {source}")
    return found


def test_no_module_imports_another_modules_private_names():
    found = [hit for p in _sources(*PACKAGES) for hit in _private_imports(p)]
    assert found == []


def test_functions_are_short():
    """No function over 60 lines in runtime/ and calibration/ unless LONG_FUNCTIONS says why."""
    long = []
    for path in _sources("runtime", "calibration"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - node.lineno + 1
                key = f"{path.relative_to(ROOT)}:{node.name}"
                if lines > MAX_LINES and key not in LONG_FUNCTIONS:
                    long.append(f"{key} ({lines} lines, from line {start})")
    assert long == []


def test_old_import_paths_still_work_and_warn():
    """The 0.1 paths resolve for one release (README "Moved modules"), to the same objects."""
    import dcssa.calibration
    import dcssa.export
    import dcssa.runtime

    tables = {**dcssa.runtime.MOVED, **dcssa.calibration.MOVED, **dcssa.export.MOVED}
    pytest.importorskip("torch")  # dcssa.export.job needs it
    for old, targets in tables.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            alias = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught), old
        for target in targets:
            new = importlib.import_module(target)
            public = [n for n in vars(new) if not n.startswith("_") and getattr(new, n).__class__.__name__ != "module"]
            for name in public:
                assert getattr(alias, name) is getattr(new, name) or name in vars(importlib.import_module(targets[0])), \
                    (old, name)
        with pytest.raises(AttributeError):
            alias.no_such_name  # noqa: B018

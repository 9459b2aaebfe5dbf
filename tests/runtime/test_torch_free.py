"""dcssa.runtime never needs torch: every module imports without it, and a query never loads it.

The runtime ships to boxes (a Jetson, a CPU server) where torch, dcssa.export and dcssa.calibration
are absent; a stray top-level import there is a crash at start-up, so each module is imported in a
fresh process (forked from one where those three cannot be imported and no dcssa module is loaded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dcssa.runtime

BLOCKED = ("torch", "dcssa.export", "dcssa.calibration", "dcssa.benchmarks", "sklearn")
MODULES = ["dcssa.runtime"] + sorted(
    m.name for m in pkgutil.walk_packages(dcssa.runtime.__path__, "dcssa.runtime.", onerror=lambda _name: None)
)
REPO = Path(__file__).resolve().parents[2]

#: third-party libraries the modules use, imported once before forking: the check is about what
#: dcssa's own modules import, and importing these in every child would take ~40 s on 2 cores
PRELOAD = ("numpy", "PIL.Image", "click", "tqdm", "onnxruntime", "fastapi", "pydantic", "starlette", "uvicorn",
           "prometheus_client")

# One interpreter with the blocked names set and the libraries loaded forks a fresh child per module,
# which imports it and writes back whether it could.
_IMPORT_EACH = f"""
import importlib, json, os, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
for lib in {PRELOAD!r}:
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
results = {{}}
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            doc = {{"ok": True}}
        except ImportError as exc:
            doc = {{"ok": False, "missing": exc.name, "error": f"{{type(exc).__name__}}: {{exc}}"}}
        except BaseException as exc:
            doc = {{"ok": False, "missing": None, "error": f"{{type(exc).__name__}}: {{exc}}"}}
        os.write(write, json.dumps(doc).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    results[module] = json.loads(data) if data else {{"ok": False, "missing": None, "error": "the child died"}}
print(json.dumps(results))
"""


def _python(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.fixture(scope="module")
def imports() -> dict[str, dict]:
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    proc = _python(["-c", _IMPORT_EACH, *MODULES])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_walk_finds_the_whole_package():
    """Guards the parametrisation below: an empty or partial walk would make it vacuous."""
    root = Path(dcssa.runtime.__file__).parent
    on_disk = {".".join(("dcssa.runtime", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
               for p in root.rglob("*.py")}
    assert on_disk == set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_torch(module, imports):
    doc = imports[module]
    if doc["ok"]:
        return
    missing = doc["missing"] or ""
    blocked = any(missing == b or missing.startswith(b + ".") for b in BLOCKED)
    if not blocked and missing and importlib.util.find_spec(missing.split(".")[0]) is None:
        pytest.skip(f"{module} needs {missing}, an optional extra not installed here")
    pytest.fail(f"{module} does not import without torch/export/calibration: {doc['error']}")


_QUERY = """
import json, sys
from click.testing import CliRunner
from dcssa.runtime.cli import main

result = CliRunner().invoke(main, sys.argv[1:])
print(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout,
                  "exception": repr(result.exception), "modules": sorted(sys.modules)}))
"""


def test_a_query_run_never_loads_torch_export_or_calibration(tmp_path):
    pytest.importorskip("onnx", reason="the tiny bundle is written with onnx.helper")
    from tiny_bundle import write_tiny_bundle, write_tiny_gallery

    from dcssa.runtime.data.synthetic import random_sketch

    bundle = write_tiny_bundle(tmp_path / "bundle")
    gallery = tmp_path / "gallery"
    g = write_tiny_gallery(bundle, gallery, photos=4)
    # a calibrator in the gallery: applying it is numpy, never scikit-learn
    from dcssa.runtime.contract.bundle import Bundle
    from dcssa.runtime.search.confidence import CONFIDENCE_FILE, FEATURES, SCHEMA, fingerprint

    n = len(FEATURES)
    model = {"kind": "logistic", "mean": [0.0] * n, "scale": [1.0] * n, "coef": [1.0] + [0.0] * (n - 1), "intercept": 0.0}
    (gallery / CONFIDENCE_FILE).write_text(json.dumps({
        "schema": SCHEMA, "features": list(FEATURES), "models": {"top1": model, "top10": model},
        "fingerprint": fingerprint(Bundle.load(bundle), g)}))
    strokes = tmp_path / "sketch.json"
    strokes.write_text(json.dumps({"strokes": [s.tolist() for s in random_sketch(np.random.default_rng(2), 3)]}))
    proc = _python(["-c", _QUERY, "query", str(strokes), "--bundle", str(bundle), "--gallery", str(gallery),
                    "--backend", "ort-cpu", "--topk", "2", "--json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["exit_code"] == 0, doc["stdout"] + doc["exception"]
    lines = [json.loads(line) for line in doc["stdout"].splitlines() if line.startswith("{")]
    assert [line["stroke"] for line in lines] == [1, 2, 3]
    assert all(len(line["results"]) == 2 for line in lines)
    # P = sigmoid(top-1 score): the calibrator was applied
    assert all(abs(line["confidence"]["top1"] - 1 / (1 + np.exp(-line["results"][0]["score"]))) < 2e-6 for line in lines)
    loaded = [m for m in doc["modules"] if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
    assert loaded == []
    assert "dcssa.runtime.session" in doc["modules"]  # the list is the query's, not an empty interpreter's

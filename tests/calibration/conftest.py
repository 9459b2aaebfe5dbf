"""The calibrated bundle most calibration tests read: int8 (two graphs) and fp16, calibrated once.

Calibration runs on a handful of rasters to keep the suite fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image
from session_artefacts import shared

from dcssa.calibration.int8 import Int8Recipe
from dcssa.calibration.job import calibrate_bundle
from dcssa.calibration.options import CalibrationOptions

INT8_BLOCKS = ("Mixed_5b", "Mixed_6a")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as the authors' transform


@pytest.fixture(scope="session")
def int8_blocks() -> list[str]:
    return list(INT8_BLOCKS)


@pytest.fixture(scope="session")
def int8_recipe() -> Int8Recipe:
    """The recipe handed to calibrate_bundle (the caller's object: it must come back unchanged)."""
    return Int8Recipe(blocks=list(INT8_BLOCKS))


@pytest.fixture(scope="session")
def calibrated(bundle2, dataset, gallery2, int8_recipe, tmp_path_factory) -> tuple[Path, dict]:
    def make(d: Path) -> Path:
        shutil.copytree(bundle2, d / "bundle")
        calibrate_bundle(d / "bundle", dataset, CalibrationOptions(
            precisions=("int8", "fp16"), recipe=int8_recipe, fidelity_gallery=gallery2, max_calib=3, max_heldout=4,
            latency_rasters=2), quiet=True)
        return d / "bundle"

    out = shared(tmp_path_factory, "calib", make)
    return out, json.loads((out / "manifest.json").read_text())  # what calibrate_bundle wrote and returned


@pytest.fixture(scope="session")
def ort_session():
    """A bare onnxruntime CPU session: the second path the runtime's results are checked against."""

    def make(path: Path) -> onnxruntime.InferenceSession:
        so = onnxruntime.SessionOptions()
        so.log_severity_level = 3
        return onnxruntime.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    return make


@pytest.fixture(scope="session")
def authors_transform():
    """``Resize(299) + ToTensor + Normalize`` of a grey uint8 raster, written out with Pillow and numpy."""

    def transform(raster: np.ndarray, size: int = 299) -> np.ndarray:
        rgb = Image.fromarray(raster).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        x = np.asarray(rgb, np.float32) / np.float32(255)
        x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
        return x.transpose(2, 0, 1)[None]

    return transform

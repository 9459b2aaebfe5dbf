"""The backend interface: load a graph, run named inputs to named outputs.

Shaped after Polygraphy's loader/runner split: a :class:`Backend` knows how to turn a graph file
into a :class:`Runner`; a runner only runs. Sessions, the gallery indexer and the exporter's parity
check all go through this, so every backend is exercised by the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np


class Runner(ABC):
    """A loaded graph. ``run`` takes and returns host numpy arrays keyed by tensor name."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    calls: int = 0  # how many times run() was called: sessions are tested on it


class Backend(ABC):
    """A way of executing graphs (one onnxruntime provider, OpenVINO, native TensorRT ...)."""

    name: str
    #: precisions this backend can execute, best first
    precisions: tuple[str, ...] = ("fp32",)
    #: precisions that are an execution mode over the fp32 graph file, not a graph of their own
    #: (OpenVINO's bf16 on AMX): such backends take ``load(path, label=..., precision=p)``
    execution_precisions: tuple[str, ...] = ()

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """True when the libraries and the device this backend needs are present."""

    @abstractmethod
    def load(self, path: Path, *, label: str | None = None) -> Runner:
        """Load one graph file; ``label`` names it in messages and timings."""

    def check_precision(self, precision: str) -> None:
        """Raise BackendError when this machine cannot execute ``precision`` (an execution mode)."""

    def describe(self) -> dict:
        return {"backend": self.name}

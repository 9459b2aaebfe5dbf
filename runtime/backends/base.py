"""The backend interface: load a graph, run named inputs to named outputs.

Shaped after Polygraphy's loaders and runners: a :class:`Backend` turns a graph file into a
:class:`Runner`; a runner only runs. :meth:`Runner.run` is concrete and the same for every
backend (feeds checked against the graph's inputs, backend exceptions turned into
:class:`BackendError`), and calls the backend's :meth:`Runner._run_impl`. What a backend may know
about a graph comes from its :class:`~dcssa.runtime.contract.manifest.GraphSpec`, never from its name.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import manifest as mf
from ..errors import BackendError, DcssaError

if TYPE_CHECKING:
    from ..contract.bundle import Bundle

REEXPORT_HINT = "the file may be corrupted: re-export the bundle with dcssa-export"


def backend_error(what: str, exc: BaseException, *, path: str | Path | None = None,
                  hint: str | None = None) -> BackendError:
    """A library's exception as a BackendError: its type and first line, never a traceback."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return BackendError(f"{what} ({type(exc).__name__}: {first})" if first else f"{what} ({type(exc).__name__})",
                        path=path, hint=hint)


class Runner(ABC):
    """A loaded graph. ``run`` takes and returns host numpy arrays keyed by tensor name."""

    spec: mf.GraphSpec
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    #: whether ``run`` may be called from several threads at once; the Retriever serialises
    #: runners that say no (:class:`SerializedRunner`)
    thread_safe: bool = True
    #: the largest batch the loaded graph takes (a TensorRT engine's profile maximum); None: any
    max_batch: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            what = "; ".join(p for p in (missing and f"missing {', '.join(missing)}",
                                         unknown and f"unknown {', '.join(unknown)}") if p)
            raise BackendError(f"{self.name}: wrong inputs ({what})", hint=f"the graph takes {', '.join(self.input_names)}")
        try:
            return self._run_impl(feeds)
        except DcssaError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend library raises its own types
            raise backend_error(f"{self.name}: the backend failed to run the graph", exc,
                                hint="see the server log; check the device, or try --backend ort-cpu") from exc

    @abstractmethod
    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with feeds already checked; return every output by name."""


class SerializedRunner(Runner):
    """A runner that is not thread-safe, made safe by one lock (one call at a time)."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.max_batch = inner.max_batch
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self.inner.run(feeds)

    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - run() delegates
        return self.inner._run_impl(feeds)


def thread_safe(runner: Runner) -> Runner:
    """``runner`` itself when it declares thread safety, else wrapped in a :class:`SerializedRunner`."""
    return runner if runner.thread_safe else SerializedRunner(runner)


class Backend(ABC):
    """A way of executing graphs (one onnxruntime provider, OpenVINO, native TensorRT ...)."""

    name: str
    #: precisions this backend can execute, best first
    precisions: tuple[str, ...] = ("fp32",)
    #: precisions that are an execution mode over the fp32 graph file, not a graph of their own
    #: (OpenVINO's bf16): ``load(path, spec, precision=p)`` applies them to heavy graphs
    execution_precisions: tuple[str, ...] = ()

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """True when the libraries and the device this backend needs are present."""

    @abstractmethod
    def load(self, path: Path, spec: mf.GraphSpec | None = None, *, precision: str | None = None) -> Runner:
        """Load one graph file; ``spec`` says what the graph is (default: its file name, no state)."""

    def artifact(self, bundle: Bundle, name: str, precision: str) -> Path:
        """The file of graph ``name`` at ``precision`` this backend loads (hash-checked)."""
        return bundle.graph_path(name, precision)

    def check_precision(self, precision: str) -> None:
        """Raise BackendError when this machine cannot execute ``precision`` (an execution mode)."""

    def describe(self) -> dict:
        return {"backend": self.name}


def spec_for(path: Path, spec: mf.GraphSpec | None) -> mf.GraphSpec:
    """``spec``, or a bare one named after the file for a loose graph."""
    return spec if spec is not None else mf.GraphSpec(Path(path).stem, {}, {})

"""``--backend triton``: the encoders run on an NVIDIA Triton Inference Server, the rest stays here.

The server serves the model repository ``dcssa-export triton BUNDLE --out REPO`` wrote: one model per
stateless heavy graph of the bundle (the sketch and photo encoders), named after the graph (plus an
optional prefix), whose ``config.pbtxt`` records the bundle manifest's sha256 in its parameters.
Every other graph (the stroke head, the projection) is loaded locally on onnxruntime's CPU provider,
and the search never leaves the process, so sessions, ``serve``, ``eval`` and ``bench`` work
unchanged.

Which graphs go remote is read from their :class:`~dcssa.runtime.contract.manifest.GraphSpec` (``heavy``
and no ``state``: :func:`remote_graph`), the same rule the repository generator uses. Before the
first request a runner checks that the server answers, that the model is loaded and ready, and
that its config names this bundle's manifest hash, graph and precision, and the graph's tensors;
each failure is a :class:`BackendError` naming the URL and the fix.

``tritonclient`` is imported lazily (``pip install 'dcssa-rt[triton]'``). The URL is
``--triton-url`` (or ``$DCSSA_TRITON_URL``): ``HOST:PORT`` or ``grpc://HOST:PORT`` for gRPC
(Triton's port 8001), ``http://HOST:PORT`` for HTTP (8000).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import manifest as mf
from ..errors import BackendError, MissingExtra
from ..extras import require
from .base import Backend, Runner, backend_error, spec_for
from .ort import OrtBackend

if TYPE_CHECKING:
    from ..contract.bundle import Bundle

URL_ENV = "DCSSA_TRITON_URL"
PREFIX_ENV = "DCSSA_TRITON_PREFIX"
DEFAULT_URL = "localhost:8001"
INSTALL = "pip install 'dcssa-rt[triton]'  (tritonclient[grpc]; HTTP URLs need tritonclient[http])"

# -- the contract between `dcssa-export triton` and this backend: config.pbtxt parameters -----------
PARAM_MANIFEST = "dcssa_manifest_sha256"
PARAM_GRAPH = "dcssa_graph"
PARAM_GRAPH_SHA = "dcssa_graph_sha256"
PARAM_PRECISION = "dcssa_precision"
PARAM_FAMILY = "dcssa_family"
#: tensorrt_plan models: the TensorRT that built the plan, and whether it was built version-compatible
PARAM_TENSORRT = "dcssa_tensorrt_version"
PARAM_VERSION_COMPATIBLE = "dcssa_tensorrt_version_compatible"
#: Triton data type of every encoder tensor: the bundle's graphs keep float32 I/O at every
#: precision (fp16 / int8 graphs convert inside; the generator's tests check this against the ONNX)
TRITON_DTYPE = "FP32"


def remote_graph(spec: mf.GraphSpec) -> bool:
    """A graph Triton serves: a heavy encoder without per-session state (one request, one answer)."""
    return spec.heavy and not spec.state


def manifest_sha256(bundle: Bundle) -> str:
    """The sha256 of the bundle's manifest.json file: what each generated config records."""
    from ..contract.bundle import sha256_file

    return sha256_file(bundle.path / mf.MANIFEST)


def batch_dim(spec: mf.GraphSpec) -> bool:
    """Whether every tensor's first dim is the same symbolic batch ("N"): then Triton may batch it."""
    firsts = {str(dims[0]) if dims else None for dims in (*spec.inputs.values(), *spec.outputs.values())}
    return firsts == {"N"}


def parse_url(url: str) -> tuple[str, str]:
    """(protocol, host:port) of a ``--triton-url``; bare ``HOST:PORT`` means gRPC."""
    url = url.strip().rstrip("/")
    for scheme in ("grpc", "http"):
        if url.startswith(f"{scheme}://"):
            return scheme, url[len(scheme) + 3:]
    if "://" in url:
        raise BackendError(f"unsupported Triton URL {url!r}",
                           hint="use HOST:PORT or grpc://HOST:PORT (gRPC, port 8001) or http://HOST:PORT (HTTP, 8000)")
    return "grpc", url


def _client_module(protocol: str):
    return require(f"tritonclient.{protocol}", "the triton backend", hint=INSTALL)


def plan_fix(bundle: Path, precision: str, built: str | None) -> str:
    """How to get a TensorRT plan the server can load (the repository alone cannot fix it)."""
    return (f"a TensorRT plan loads only on the TensorRT release that built it{f' (these: {built})' if built else ''}, "
            "unless built version-compatible: build the engines with the server's TensorRT (run `dcssa-export engines "
            f"{bundle} --precision {precision}` in the server's container or on its machine), or build them "
            f"version-compatible (`dcssa-export engines {bundle} --precision {precision} --version-compatible`) and "
            "start tritonserver with --backend-config=tensorrt,version-compatible=true; then write the repository "
            f"again (`dcssa-export triton {bundle} --platform tensorrt --precision {precision} --out REPO --force`)")


#: words of Triton's / TensorRT's reasons for a plan that does not load on the server's TensorRT
PLAN_REASONS = ("engine plan file is not compatible", "version of tensorrt", "serialization", "deserializ",
                "version-compatible", "version compatible")


def plan_load_failure(reason: str) -> bool:
    """Whether a model's load-failure reason says its TensorRT plan does not fit the server's TensorRT."""
    text = reason.lower()
    return any(word in text for word in PLAN_REASONS)


def _param(config: Mapping, key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    return None if value is None else str(value.get("string_value", ""))


class TritonRunner(Runner):
    """One model on a Triton server. A client per thread (tritonclient's HTTP client is not thread-safe)."""

    def __init__(self, url: str, model: str, spec: mf.GraphSpec, *, manifest_sha: str, precision: str,
                 bundle: Path, engines_tensorrt: str | None = None) -> None:
        self.engines_tensorrt = engines_tensorrt  # the TensorRT of the bundle's engines (manifest), if any
        self.protocol, self.address = parse_url(url)
        self.url, self.model, self.spec = url, model, spec
        self.input_names, self.output_names = spec.input_names, spec.output_names
        self._module = _client_module(self.protocol)
        self._local = threading.local()
        self.max_batch = self._check(manifest_sha, precision, bundle)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._module.InferenceServerClient(url=self.address)
        return client

    def _json(self, method: str, *args):
        """A metadata call as a dict/list: gRPC returns protobuf unless ``as_json``, HTTP always JSON."""
        fn = getattr(self._client(), method)
        return fn(*args, as_json=True) if self.protocol == "grpc" else fn(*args)

    def _where(self) -> str:
        return f"Triton server {self.protocol}://{self.address}"

    def _check(self, manifest_sha: str, precision: str, bundle: Path) -> int:
        """Server up, model ready, config made from this bundle at this precision; returns max_batch_size."""
        client = self._client()
        try:
            live = client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - gRPC / HTTP / socket errors of every kind
            raise backend_error(f"{self._where()} is unreachable", exc,
                                hint=f"start tritonserver --model-repository REPO there, or pass the right "
                                f"--triton-url (${URL_ENV}); HOST:PORT is gRPC (8001), http://HOST:PORT is HTTP (8000)") from None
        if not live:
            raise BackendError(f"{self._where()} answers but is not live", hint="check the server log")
        regen = f"`dcssa-export triton {bundle} --out REPO --precision {precision}`"
        try:
            ready = client.is_model_ready(self.model)
        except Exception as exc:  # noqa: BLE001
            raise backend_error(f"{self._where()}: cannot ask whether model {self.model!r} is ready", exc) from None
        if not ready:
            raise self._not_ready(bundle, precision, regen)
        try:
            config = self._json("get_model_config", self.model)
        except Exception as exc:  # noqa: BLE001
            raise backend_error(f"{self._where()}: cannot read the config of model {self.model!r}", exc) from None
        config = config.get("config", config)  # gRPC wraps it in {"config": ...}
        got_sha = _param(config, PARAM_MANIFEST)
        if got_sha is None:
            raise BackendError(f"{self._where()}: model {self.model!r} was not made by `dcssa-export triton` "
                               f"(its config has no {PARAM_MANIFEST} parameter)", hint=f"serve the repository of {regen}")
        if got_sha != manifest_sha:
            raise BackendError(
                f"{self._where()}: model {self.model!r} was generated from another bundle (manifest sha256 "
                f"{got_sha[:12]}..., this bundle's {manifest_sha[:12]}...): its embeddings would not match the gallery",
                path=bundle / mf.MANIFEST,
                hint=f"regenerate the repository with {regen} and reload it on the server, or point --bundle at "
                "the bundle the server's repository was made from",
            )
        self._check_plan(config, bundle, precision)
        got_graph, got_prec = _param(config, PARAM_GRAPH), _param(config, PARAM_PRECISION)
        if got_graph not in (None, self.spec.name) or got_prec not in (None, precision):
            raise BackendError(f"{self._where()}: model {self.model!r} serves {got_graph} at {got_prec}, "
                               f"not {self.spec.name} at {precision}", hint=f"serve the repository of {regen}")
        served_in = tuple(t.get("name") for t in config.get("input", []))
        served_out = {t.get("name") for t in config.get("output", [])}
        if set(served_in) != set(self.input_names) or not set(self.output_names) <= served_out:
            raise BackendError(f"{self._where()}: model {self.model!r} takes {', '.join(served_in)} and gives "
                               f"{', '.join(sorted(served_out))}; the bundle's {self.spec.name} takes "
                               f"{', '.join(self.input_names)} and gives {', '.join(self.output_names)}",
                               hint=f"serve the repository of {regen}")
        return int(config.get("max_batch_size", 0) or 0)

    def _not_ready(self, bundle: Path, precision: str, regen: str) -> BackendError:
        """Why the model is not ready, as the server's repository index says (a plan of another TensorRT ...)."""
        try:
            index = self._json("get_model_repository_index")
            models = index.get("models", []) if isinstance(index, dict) else index
        except Exception:  # noqa: BLE001 - the listing only decorates the message
            models = []
        have = [m.get("name", "?") for m in models]
        reason = next((str(m.get("reason", "")) for m in models if m.get("name") == self.model), "")
        if plan_load_failure(reason):
            return BackendError(f"{self._where()} could not load the TensorRT plan of model {self.model!r}: {reason}",
                                hint=plan_fix(bundle, precision, self.engines_tensorrt))
        return BackendError(
            f"{self._where()} has no ready model {self.model!r} (models there: {', '.join(have) or 'none'})",
            hint=f"write the repository with {regen}, serve it (tritonserver --model-repository REPO), "
            f"or fix --triton-prefix / ${PREFIX_ENV}",
        )

    def _check_plan(self, config: Mapping, bundle: Path, precision: str) -> None:
        """A tensorrt_plan model records the TensorRT that built it: it must be this bundle's engines'."""
        served = _param(config, PARAM_TENSORRT)
        if config.get("platform") != "tensorrt_plan" or served is None:
            return
        if self.engines_tensorrt is not None and served != self.engines_tensorrt:
            raise BackendError(
                f"{self._where()}: model {self.model!r} is a plan built with TensorRT {served}, but this bundle's "
                f"engines were built with TensorRT {self.engines_tensorrt}: the repository was written before the "
                "engines were rebuilt", path=bundle / mf.MANIFEST,
                hint=f"write the repository again (`dcssa-export triton {bundle} --platform tensorrt --precision "
                f"{precision} --out REPO --force`) and reload it; {plan_fix(bundle, precision, self.engines_tensorrt)}")

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = self._module
        inputs = []
        for name in self.input_names:
            arr = np.ascontiguousarray(feeds[name], dtype=np.float32)
            inp = m.InferInput(name, list(arr.shape), TRITON_DTYPE)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [m.InferRequestedOutput(name) for name in self.output_names]
        result = self._client().infer(self.model, inputs, outputs=outputs)
        return {name: result.as_numpy(name) for name in self.output_names}

    def _run_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        if self.max_batch <= 0 or n <= self.max_batch:
            return self._infer(feeds)
        # larger than the model's max_batch_size (an `index --batch-size` beyond it): in chunks
        parts = [self._infer({k: v[i:i + self.max_batch] for k, v in feeds.items()}) for i in range(0, n, self.max_batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}


class TritonBackend(Backend):
    """Encoders on a Triton server (gRPC or HTTP), every other graph on local onnxruntime CPU."""

    name = "triton"
    precisions = ("fp32", "fp16", "int8")

    def __init__(self, url: str | None = None, *, prefix: str | None = None, threads: int | None = None) -> None:
        self.url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        self.prefix = prefix if prefix is not None else os.environ.get(PREFIX_ENV, "")
        _client_module(parse_url(self.url)[0])  # installed? (raises naming the extra)
        self.local = OrtBackend("ort-cpu", threads=threads)
        self._remote: dict[Path, tuple[Bundle, str]] = {}  # key path -> (bundle, precision)

    @classmethod
    def available(cls) -> bool:
        """Only when a server is named ($DCSSA_TRITON_URL / --triton-url) and tritonclient is installed."""
        if not os.environ.get(URL_ENV):
            return False
        try:
            _client_module(parse_url(os.environ[URL_ENV])[0])
        except (BackendError, MissingExtra):
            return False
        return True

    def artifact(self, bundle: Bundle, name: str, precision: str) -> Path:
        """Encoders: the bundle's entry (remembered, not read: the server holds the graph); the rest: local files."""
        if not remote_graph(bundle.graph_spec(name, precision)):
            return self.local.artifact(bundle, name, precision)
        key = bundle.path / bundle.graph_entry(name, precision)["file"]
        self._remote[key] = (bundle, precision)
        return key

    def load(self, path: Path, spec: mf.GraphSpec | None = None, *, precision: str | None = None) -> Runner:
        if precision not in (None, "fp32"):
            raise BackendError(f"triton has no {precision} execution mode",
                               hint="generate the repository at that precision (dcssa-export triton --precision)")
        spec = spec_for(path, spec)
        remote = self._remote.get(Path(path))
        if remote is None:
            return self.local.load(path, spec)
        bundle, file_precision = remote
        return TritonRunner(self.url, self.prefix + spec.name, spec, manifest_sha=manifest_sha256(bundle),
                            precision=file_precision, bundle=bundle.path,
                            engines_tensorrt=bundle.manifest.get("engines", {}).get("tensorrt"))

    def describe(self) -> dict:
        return {"backend": self.name, "url": self.url, "prefix": self.prefix, "local": self.local.describe()}

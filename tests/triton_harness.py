"""A real Triton Inference Server for the tests: PyTriton's bundled ``tritonserver`` serving the models
of a repository written by ``dcssa-export triton``.

PyTriton's server has the python backend only, so it cannot load the repository's
``onnxruntime_onnx`` models itself. Each model is instead bound with ``Triton().bind`` as a python
model that runs the repository's own ``1/model.onnx`` in onnxruntime on the CPU, with the name, the
tensors (names, dims, FP32), ``max_batch_size``, the dynamic batcher (preferred sizes, queue delay)
and the ``parameters`` of the repository's ``config.pbtxt`` (parsed with tritonclient's
``model_config_pb2``). What a client sees (model names, readiness, config, the gRPC inference API,
dynamic batching) is Triton's own.

The python-backend stub embeds libpython: it must be the venv interpreter's (FACTS.md), so
``LD_LIBRARY_PATH`` is set to its LIBDIR before the server starts.
"""

from __future__ import annotations

import os
import socket
import sysconfig
import threading
from pathlib import Path

import numpy as np


def parse_config(path: Path):
    """config.pbtxt as Triton's ModelConfig protobuf (tritonclient's model_config_pb2)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running PyTriton server; ``batches[model]`` lists the batch sizes each execution received."""

    def __init__(self, triton, grpc_port: int, http_port: int) -> None:
        self.triton = triton
        self.grpc_url = f"localhost:{grpc_port}"
        self.http_url = f"http://localhost:{http_port}"
        self.batches: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    def stop(self) -> None:
        self.triton.stop()


def _infer_fn(served: Served, model: str, onnx_path: Path, inputs: list[str], outputs: list[str]):
    import onnxruntime as ort
    from pytriton.decorators import batch

    # onnxruntime's defaults (all cores), as `--backend ort-cpu` runs the graph in-process
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    @batch
    def infer(**feeds):
        n = len(next(iter(feeds.values())))
        with served.lock:
            served.batches.setdefault(model, []).append(n)
        outs = session.run(outputs, {k: np.asarray(feeds[k], dtype=np.float32) for k in inputs})
        return dict(zip(outputs, outs))

    return infer


def serve_repository(repo: Path) -> Served:
    """Start PyTriton with every model of ``repo``; raises when the server cannot start."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    grpc_port, http_port = free_port(), free_port()
    config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=free_port(), exit_on_error=True,
                          exit_timeout_secs=2)  # clients' idle HTTP connections would hold the stop 30 s
    triton = Triton(config=config)  # its own short temp workspace (ZMQ socket paths have a length limit)
    served = Served(triton, grpc_port, http_port)
    params: dict[str, dict[str, str]] = {}
    try:
        for folder in sorted(p for p in Path(repo).iterdir() if (p / "config.pbtxt").is_file()):
            cfg = parse_config(folder / "config.pbtxt")
            ins = [t.name for t in cfg.input]
            outs = [t.name for t in cfg.output]
            batcher = DynamicBatcher(max_queue_delay_microseconds=cfg.dynamic_batching.max_queue_delay_microseconds,
                                     preferred_batch_size=list(cfg.dynamic_batching.preferred_batch_size) or None)
            triton.bind(
                model_name=cfg.name,
                infer_func=_infer_fn(served, cfg.name, folder / "1" / "model.onnx", ins, outs),
                inputs=[Tensor(name=t.name, shape=tuple(t.dims), dtype=np.float32) for t in cfg.input],
                outputs=[Tensor(name=t.name, shape=tuple(t.dims), dtype=np.float32) for t in cfg.output],
                config=ModelConfig(batching=cfg.max_batch_size > 0, max_batch_size=cfg.max_batch_size, batcher=batcher),
                strict=True,
            )
            params[cfg.name] = {k: v.string_value for k, v in cfg.parameters.items()}
        # carry the repository's parameters into the config PyTriton generates (before it is written)
        for model in triton._model_manager.models:
            model._get_triton_model_config().backend_parameters.update(params[model.model_name])
        triton.run()
    except BaseException:
        triton.stop()
        raise
    return served

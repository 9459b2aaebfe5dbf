"""``dcssa-rt serve``: live drawing sessions over HTTP/WebSocket with dynamic encoder batching.

Needs the ``[serve]`` extra (FastAPI, uvicorn); the rest of the runtime never imports this package.
Names are imported lazily so ``dcssa.runtime.cli.serve`` loads without FastAPI installed.

    from dcssa.runtime.serve import ServeConfig, create_app
    app = create_app(retriever, config=ServeConfig(max_batch=8))
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "ServeOptions", "create_app", "DynamicBatcher", "SessionStore", "MemoryStore", "RedisStore",
           "session_memory_bound"]

_WHERE = {
    "ServeConfig": ".config",
    "ServeOptions": ".config",
    "create_app": ".app",
    "DynamicBatcher": ".batcher",
    "SessionStore": ".sessions",
    "MemoryStore": ".sessions",
    "RedisStore": ".sessions",
    "session_memory_bound": ".sessions",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(name)

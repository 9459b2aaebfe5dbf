"""The server's limits and batching settings (one field per ``dcssa-rt serve`` flag)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Server limits and batching; the CLI flags of ``dcssa-rt serve`` map one to one."""

    max_sessions: int = 256
    session_ttl: float = 1800.0  # seconds idle before a session is dropped
    max_batch: int = 8
    batch_window_ms: float = 5.0
    max_queue: int = 256  # strokes waiting for the encoder before 503
    max_body_bytes: int = 1 << 20
    max_points: int = 4096  # per stroke
    session_store: str = "memory"  # or a redis:// URL: sessions shared by every replica
    store_timeout: float = 2.0  # seconds: connect and reply timeout of each session-store command
    confidence_threshold: float = 0.9  # P(top1) at which the page says "found it?"

    def __post_init__(self) -> None:
        small = [k for k in ("max_sessions", "max_batch", "max_queue", "max_body_bytes", "max_points")
                 if getattr(self, k) < 1]
        if not 0 < self.confidence_threshold <= 1:
            raise ValueError("ServeConfig: confidence_threshold must lie in (0, 1]")
        if small or self.session_ttl <= 0 or self.batch_window_ms < 0 or self.store_timeout <= 0:
            raise ValueError(f"ServeConfig: {', '.join(small) or 'session_ttl / batch_window_ms / store_timeout'} "
                             "out of range")

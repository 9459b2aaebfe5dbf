"""What the per-stroke benchmark measures: a :class:`Method` and the names of the PyTorch peers.

Apart from :mod:`.stroke_latency` (which measures methods) and :mod:`.torch_peers` (which builds the
PyTorch ones) so that each can import these without importing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: the PyTorch peers (``dcssa-bench run --peers``), in table order; peer ``p`` is the method ``torch-p``
PEERS = ("eager", "channels-last", "bf16", "compile")


@dataclass
class Method:
    name: str
    start: Callable[[], None]  # a new sketch (session) begins
    stroke: Callable[[int], object]  # add stroke t (0-based)
    phases: list[dict] = field(default_factory=list)
    #: what ``stroke`` returned for each stroke of the last timed repeat (for output checks)
    outputs: list = field(default_factory=list)

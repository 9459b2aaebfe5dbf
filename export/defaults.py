"""Model defaults the command line shows in its help: here, not in the torch modules, so that
``dcssa-export --help`` (and the generated CLI reference) needs no torch."""

from __future__ import annotations

#: DC-SSA: attention heads of the stroke head (cannot be read from the weights; the authors use 8)
DEFAULT_HEADS = 8
#: DC-SSA: embedding size E of the demo checkpoint
DEFAULT_EMBED = 64
#: ARNet: the ``mlp_head`` size of the demo checkpoint
DEFAULT_ARNET_EMBED = 512

"""dcssa.export: a trained checkpoint -> a verified bundle (ONNX graphs + manifest.json); torch lives here only.

One loader per model family: DC-SSA (:mod:`.dcssa`, with :mod:`.checkpoint`, :mod:`.model`, :mod:`.graphs`)
and ARNet (:mod:`.arnet`, :mod:`.vit`); :mod:`.job` detects the family and runs its export,
:mod:`.parity` checks every graph against PyTorch through the runtime's own backend, :mod:`.triton`
writes a Triton model repository. :mod:`.defaults` holds what the CLI's help shows (no torch).
"""

from dcssa.runtime import compat as _compat

#: import paths of the 0.1 layout (deprecated, removed in 0.3)
MOVED = {"dcssa.export.bundle": ("dcssa.export.job", "dcssa.export.dcssa")}
_compat.install(MOVED)

"""``dcssa-rt eval``: on-the-fly retrieval accuracy of a bundle on a dataset in the QMUL layout.

Kept import-free so that ``dcssa.runtime.cli`` can register the command without loading numpy
code paths it does not need; import the submodules (``metrics``, ``protocols``, ``qmul``,
``report``, ``pipeline``) directly.
"""

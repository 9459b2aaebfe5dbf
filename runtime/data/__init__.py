"""Data on disk: photo folders (``photos``), synthetic shapes and tracings (``synthetic``) and the
datasets made of them (``datasets``), and the QMUL and ARNet dataset readers (``qmul``, ``arnet``).

Offline jobs (indexing, evaluation, calibration, export) read data through here; the per-stroke path
never does.
"""

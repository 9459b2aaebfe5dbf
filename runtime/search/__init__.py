"""Search, per stroke: the gallery's photo matrix and its exact top-k (``gallery``), its FAISS index
when it has one (``faiss_index``), and the calibrated per-stroke confidence (``confidence``).

Building or updating a gallery is :mod:`dcssa.runtime.indexing`; nothing here imports it.
"""

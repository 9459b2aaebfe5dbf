"""``dcssa-bench gpu-check``: the first contact of the GPU path with a GPU, in stages a lent slot can afford.

:mod:`.probe` reads the machine without importing anything heavy, :mod:`.stages` orders and isolates
the stages, :mod:`.bodies` holds what each stage does, :mod:`.report` rewrites the JSON and Markdown
report after every stage, :mod:`.verdict` judges the parity results, :mod:`.torch_cuda` times the
PyTorch peers on the same device, and :mod:`.install` (stdlib only, run as a file by ``make
gpu-check``) installs only what the machine lacks.
"""

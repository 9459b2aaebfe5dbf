# The two commands of the README: `make demo` and `make test`. Both create .venv when missing and
# install what they need; both are safe to run again.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dcssa-installed
# what only the tests need beyond the demo's extras: NNCF (tests/calibration/test_nncf.py)
TEST_STAMP := $(VENV)/.dcssa-test-installed
OUT    := demo-out
# torch/torchvision pinned to the releases this project is tested with (x86_64 wheels; see README
# for Jetson/aarch64).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo demo-arnet test test-all bench gpu-check docs docs-build clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[export,dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash examples/demo.sh $(OUT)

# The same on an ARNet (ViT) model: structured demo checkpoint in ARNet's layout (README "ARNet").
demo-arnet: $(STAMP)
	bash examples/demo_arnet.sh $(OUT)/arnet

# README "Performance": demo bundle + its int8 graphs, then `dcssa-bench run` (about 7 minutes here, measured
# before the PyTorch peers; torch-compile's first compile adds 2.5-3 minutes on 2 busy cores).
bench: $(STAMP)
	bash examples/bench.sh $(OUT) bench-out

# docs/guides/gpu.md: the GPU path on a GPU box (NGC TensorRT/PyTorch container, JetPack 6/7, a CUDA box with
# PyTorch), in budgeted stages; report in gpu-check-out/ (gpu-check.md, .json), rewritten after every stage.
# Its own venv SEES the machine's TensorRT, torch and onnxruntime-gpu (--system-site-packages);
# benchmarks/gpu/install.py adds only what is missing. Without a GPU: exit 2 at once, the report says why.
# GPU_CHECK_ARGS: e.g. --quick, --budget-s 900, --version-compatible.
GPU_VENV := .venv-gpu
gpu-check:
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(GPU_VENV)
	$(GPU_VENV)/bin/python benchmarks/gpu/install.py
	$(GPU_VENV)/bin/dcssa-bench gpu-check --bundle $(OUT)/bundle --out gpu-check-out $(GPU_CHECK_ARGS)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[export,dev,docs,nncf]'
	touch $(TEST_STAMP)

# The documentation site (mkdocs.yml). `docs-build` fails on a broken link, a missing page or an
# unknown anchor (strict; never add -q: it hides those); `make docs` serves it at http://127.0.0.1:8000.
# NO_MKDOCS_2_WARNING silences mkdocs-material's end-of-life banner only.
docs-build: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve -a 127.0.0.1:8000

# pytest-xdist workers: two keep both cores of the CI machine busy while one test waits on a service
# or a subprocess; every worker holds torch and a few models (~2-3 GB), so raise it with the memory.
TEST_WORKERS ?= 2

# `make test` (and CI) leave out the tests marked slow (today one: torch.compile of the DC-SSA trunk,
# 2.5 minutes of inductor on 2 cores; the ARNet compile test keeps the path covered); `make test-all`
# runs every test.
test: $(TEST_STAMP) docs-build
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-all: $(TEST_STAMP) docs-build
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(OUT) dcssa-bundle bench-out gpu-check-out .pytest_cache site

# Two commands do the whole set-up on a fresh machine with only python3:
#   make demo   -> virtual environment, install, then `frtf quickstart` on the embedded sample
#   make test   -> virtual environment, install (with test extras), then the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# PyTorch's CPU build, for the tests that build insightface reference models and export them with
# torch.onnx.export (the package never needs torch).  Pinned to the CPU wheel: a plain `torch` from PyPI
# pulls gigabytes of CUDA libraries.  Where the local wheel folder does not hold it, PyTorch's CPU index.
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_STAMP := $(VENV)/.torch
$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet '$(TORCH_CPU)' || \
		$(PY) -m pip install --quiet --index-url https://download.pytorch.org/whl/cpu torch
	touch $(TORCH_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/frtf quickstart --out output/quickstart

# worker processes (pytest-xdist): a test that crashes the interpreter (a native SIGSEGV) fails by name
# and the suite goes on in a fresh worker; TEST_WORKERS=1 for one test at a time
TEST_WORKERS ?= 2
test: $(STAMP) $(TORCH_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 8 tests

clean:
	rm -rf $(VENV) output build *.egg-info

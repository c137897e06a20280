# The two commands of README.md. Each makes its own virtual environment (.venv) and installs
# what it needs the first time; later runs reuse it until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# torch pinned first: it is a CPU build on these machines, and an unpinned torch pulled in by
# transformers would download a multi-GB CUDA build.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# ARGS adds flags: make demo ARGS='--set trainer.num_train_steps=1000'
demo: $(VENV)/.installed
	$(BIN)/python -m lmlib.main --exp=StdlibLlama --workdir=runs/demo $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests

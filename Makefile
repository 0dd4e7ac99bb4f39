# perceptserve: `make demo` runs the main job end to end, `make test` runs the suite.
# Both create the virtual environment on first use; nothing else needs installing by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL_TYPE ?= vit_tiny
CHECKPOINT ?=
PYTEST_ARGS ?=

.PHONY: install demo demo-datasetdm lint test clean

install: $(VENV)/.installed

# torch and torchvision first, as the pair that installs from this machine's disk; then the
# project, editable, with its test and DatasetDM extras. --no-compile: Python compiles what is
# imported on first use instead of every file of every package up front (CI's time).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -e ".[test,datasetdm]"
	touch $@

demo: install
	$(BIN)/perceptserve demo --model-type $(MODEL_TYPE) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

demo-datasetdm: install
	$(BIN)/perceptserve demo-datasetdm

# The linter first (config in pyproject.toml): a finding fails the run before pytest starts.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install helm-tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf repository demo-output bench-output .pytest_cache

include helm/helm.mk

# voice2face: `make help` lists the targets.
# Everything installs itself: the first target that needs Python builds .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
METHOD ?= gan
ARGS   ?=
DATA   ?= data/synth-default
PRESET ?= default
PRETRAINED := $(DATA)/pretrained
PYTEST_ARGS ?=
PRETRAIN_ARGS ?=   # overrides for the pretraining runs, e.g. trainer.max_steps=50

# Pretrained nets each method needs before it trains (built when missing).
NEEDS_gan    := $(PRETRAINED)/voice.ckpt $(PRETRAINED)/face.ckpt
NEEDS_cgan   := $(NEEDS_gan)
NEEDS_dimnet := $(PRETRAINED)/face.ckpt

.DEFAULT_GOAL := help
.PHONY: help install data train test test-all bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: METHOD=$(METHOD) DATA=$(DATA) ARGS='key=value ...'"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv and install the package with its dev extras

$(DATA)/manifest.json: | $(STAMP)
	$(BIN)/voice2face synth --preset $(PRESET) --out $(DATA)

data: $(DATA)/manifest.json ## generate the default synthetic world (data/synth-default)

# Pretrained nets: resumable runs with fixed names, exported to $(PRETRAINED).
$(PRETRAINED)/%.ckpt: $(DATA)/manifest.json
	$(BIN)/voice2face train $* data.root=$(DATA) run.name=pretrain-$*-$(notdir $(DATA)) \
		run.resume=auto $(PRETRAIN_ARGS) --export $@

train: $(STAMP) $(DATA)/manifest.json $(NEEDS_$(METHOD)) ## train METHOD (default gan) on DATA; ARGS='key=value ...'
	$(BIN)/voice2face train $(METHOD) data.root=$(DATA) $(ARGS)

test: $(STAMP) ## fast tests (CPU, tiny worlds made in tmp dirs)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test, including multi-process DDP runs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## print the benchmarks' numbers
	$(BIN)/python benchmarks/datamodule.py
	$(BIN)/python benchmarks/metrics.py

clean: ## remove runs and generated data (keeps .venv)
	rm -rf runs data wandb

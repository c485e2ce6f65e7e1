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

# The profile of every run make starts (cpu or paper), decided by voice2face/hardware.py, the
# same function as profile=auto: asked once .venv exists (a fresh clone's first make builds it,
# then goes on in a sub-make that can ask). Empty when a GPU is there that torch cannot use:
# the command says why. PROFILE=cpu|paper decides by hand.
ifeq ($(origin PROFILE),undefined)
PROFILE := $(if $(wildcard $(STAMP)),$(shell $(BIN)/python -m voice2face.hardware))
endif
need_profile = $(if $(PROFILE),,$(error no profile for this machine (see the line above); set PROFILE=cpu or PROFILE=paper))

# What each method needs, from the registry (voice2face/methods/__init__.py): the pretrained
# nets its config names under each profile (NEEDS_<profile>_<method>, stems in $(PRETRAINED))
# and the run that makes each of them (MAKER_<stem>). Remade when the registry or a config
# changes; read once .venv exists, like PROFILE.
REGISTRY := $(VENV)/registry.mk
ifneq ($(wildcard $(STAMP)),)
include $(REGISTRY)
endif
$(REGISTRY): voice2face/methods/__init__.py voice2face/registry.py voice2face/config.py \
		voice2face/constants.py $(wildcard experiments/*.yaml) | $(STAMP)
	$(BIN)/python -m voice2face.registry make > $@.tmp && mv $@.tmp $@
needs = $(patsubst %,$(PRETRAINED)/%.ckpt,$(NEEDS_$(PROFILE)_$(1)))

.DEFAULT_GOAL := help
.PHONY: help install lock data train train-now test test-all bench clean slurm test-slurm sweep sweep-now sweep-check

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: METHOD=$(METHOD) DATA=$(DATA) ARGS='key=value ...'"
	$(if $(METHOD_NAMES),@echo "  methods: $(METHOD_NAMES)")

LOCK   := requirements.lock
UV     := $(BIN)/uv
UV_PIP := VIRTUAL_ENV=$(VENV) $(UV) pip

# Exactly the locked set (uv, itself locked, installs it four times faster than pip), compiled
# to bytecode once (12 s on 2 cores; where PYTHONDONTWRITEBYTECODE is set, every process would
# otherwise compile what it imports, about 7 s per `voice2face train`); then the package without
# resolving anything; then a check that torch and torchaudio are the locked pair and that their
# compiled parts load; last, the registry's make variables, so that the first make after the
# install does not pay a Python start for them.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $$(grep '^uv==' $(LOCK))
	$(UV_PIP) sync --quiet --compile-bytecode $(LOCK)
	$(UV_PIP) install --quiet --no-deps --no-build-isolation -e .
	$(UV_PIP) check --quiet
	$(BIN)/python -m voice2face.environment
	$(BIN)/python -m voice2face.registry make > $(REGISTRY).tmp && mv $(REGISTRY).tmp $(REGISTRY)
	touch $@

install: $(STAMP) ## create .venv with exactly the packages of requirements.lock

# A new lock is a reviewed change: resolve pyproject.toml's ranges in a scratch venv, freeze
# (setuptools too: the build backend, since the install builds without isolation).
lock: ## re-resolve pyproject.toml into requirements.lock (then review the diff and test)
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[dev]' setuptools
	{ echo "# Every package that 'make test' passed with; 'make install' installs exactly these."; \
	  echo "# Made by 'make lock' from pyproject.toml on $$(uname -sm), Python $$(.lock-venv/bin/python -V | cut -d' ' -f2)."; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK): review 'git diff $(LOCK)', then 'rm -rf .venv && make test'"

$(DATA)/manifest.json: | $(STAMP)
	$(BIN)/voice2face synth --preset $(PRESET) --out $(DATA)

data: $(DATA)/manifest.json ## generate the default synthetic world (data/synth-default)

# Pretrained nets: resumable runs with fixed names, exported to $(PRETRAINED), each after the
# nets its own method needs (the decoder after its target network and the judge).
.SECONDEXPANSION:
$(PRETRAINED)/%.ckpt: $(DATA)/manifest.json $$(call needs,$$(firstword $$(MAKER_$$*)))
	$(need_profile)
	$(if $(MAKER_$*),,$(error $@: no pretrained net of that name; the registry makes $(patsubst MAKER_%,%.ckpt,$(filter MAKER_%,$(.VARIABLES)))))
	$(BIN)/voice2face train $(MAKER_$*) data.root=$(DATA) profile=$(PROFILE) run.name=pretrain-$*-$(notdir $(DATA)) \
		run.resume=auto run.evaluate=false $(PRETRAIN_ARGS) --export $@

train: $(STAMP) ## train METHOD (default gan) on DATA; ARGS='key=value ...', PROFILE=cpu|paper
	@$(MAKE) --no-print-directory train-now

train-now: $(DATA)/manifest.json $(call needs,$(METHOD))
	$(need_profile)
	$(BIN)/voice2face train $(METHOD) data.root=$(DATA) profile=$(PROFILE) $(ARGS)

test: $(STAMP) ## fast tests (CPU, tiny worlds made in tmp dirs)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test, including multi-process DDP runs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## print the benchmarks' numbers
	$(BIN)/python benchmarks/datamodule.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/cae.py --threads 1

# SLURM: one task per GPU (GPUS=0: TASKS CPU processes per node), srun, requeue on SIGUSR1;
# CPUS cores per task (default 8 with GPUS, 1 without), data.num_workers one fewer. The job
# runs profile=paper with GPUS, cpu without (ARGS may name one); its pretrained nets must exist.
NODES ?= 1
GPUS  ?= 1
TASKS ?= 2
CPUS  ?=
SLURM_FLAGS = --nodes $(NODES) --gpus $(GPUS) --tasks $(TASKS) $(if $(CPUS),--cpus-per-task $(CPUS)) \
	$(if $(RUN_NAME),--name '$(RUN_NAME)') $(if $(WALLTIME),--time '$(WALLTIME)') \
	$(if $(SBATCH),--sbatch '$(SBATCH)') $(if $(DRY),--dry-run)

slurm: $(STAMP) ## sbatch METHOD on NODES x GPUS, CPUS per task (ARGS, RUN_NAME, WALLTIME, SBATCH='--partition=..'); DRY=1 prints it
	$(BIN)/python -m voice2face.slurm $(METHOD) $(SLURM_FLAGS) -- data.root=$(DATA) $(ARGS)

test-slurm: $(STAMP) ## a real one-node SLURM (apt, root): 2-task CPU DDP job, requeued and resumed
	tests/slurm/run.sh

# W&B: the W&B set-up is checked before the data and pretrained nets the trials need are made.
sweep: $(STAMP) sweep-check ## W&B sweep of METHOD (experiments/sweeps/) and an agent; COUNT=N trials; needs a W&B login
	@$(MAKE) --no-print-directory sweep-now

sweep-now: $(DATA)/manifest.json $(call needs,$(METHOD))
	$(BIN)/python -m voice2face.sweep $(METHOD) --data $(DATA) $(if $(COUNT),--count $(COUNT)) \
		$(if $(SWEEP_ID),--sweep-id $(SWEEP_ID))

sweep-check: $(STAMP)
	@$(BIN)/python -m voice2face.sweep $(METHOD) --check

clean: ## remove runs and generated data (keeps .venv)
	rm -rf runs data wandb

# Every evaluable method and variant trained (or reused: `voice2face results --help` says
# when a run counts as finished) and evaluated under one protocol: $(RESULTS) and its figure.
# ARGS go to every method's run, PRETRAIN_ARGS to the pretrained nets built first.
RESULTS ?= docs/results.md
# the README's methods table is written from the table that README links to, docs/results.md
README_TABLE ?= $(if $(filter docs/results.md,$(RESULTS)),README.md)
RESULTS_STARTED := $(shell date +%s)
.PHONY: results results-now
results: $(STAMP) ## train or reuse every method on DATA, evaluate alike, write docs/results.md; ARGS, PRETRAIN_ARGS
	@$(MAKE) --no-print-directory results-now RESULTS_STARTED=$(RESULTS_STARTED)

results-now: $(DATA)/manifest.json $(call needs,results)
	$(BIN)/voice2face results --data $(DATA) --out $(RESULTS) --started $(RESULTS_STARTED) \
		--pretrain-args '$(PRETRAIN_ARGS)' $(if $(README_TABLE),--readme $(README_TABLE)) $(ARGS)

# Issue 23: one command that proves the GPU path, on a GPU node with its own Python 3.12, torch,
# torchaudio, lightning and torchmetrics that reaches no package index (docs/gpu-check.md).
# gpu-check-wheels runs on a connected machine: the packages of benchmarks/gpu-check-packages.txt
# at the lock's versions, as CPython 3.12 manylinux wheels; gpu-check installs them from there
# (pip --no-index) and needs neither .venv nor `make install`.
GPU_WHEELS ?= .gpu-wheels
OUT ?= gpu-check-logs
GPU_CHECK_ARGS ?=
.PHONY: gpu-check gpu-check-wheels
gpu-check: ## on a GPU node: fast tests, every paper profile in bf16, DDP, benchmarks; logs in OUT (9 min)
	$(PYTHON) benchmarks/gpu_check.py --out $(OUT) --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

gpu-check-wheels: ## download the wheels gpu-check installs offline into .gpu-wheels (FULL=1: wandb, av too)
	rm -rf $(GPU_WHEELS)
	pins=$$($(PYTHON) benchmarks/gpu_check.py --wheel-list $(if $(FULL),--full)) && \
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) $$pins
	@echo "$$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(GPU_WHEELS) | cut -f1) in $(GPU_WHEELS)/"

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

# The frozen voice embedder of the GAN and the CAE: DIMNet's voice branch in the `cpu`
# profiles (it hears the world's shared attributes best: README, "The voice side"), the
# speaker-recognition `voice` net in the `paper` profiles, which profile=auto picks on a GPU.
VOICE_NET ?= $(if $(shell nvidia-smi -L 2>/dev/null),voice,dimnet)

# Pretrained nets each method needs before it trains (built when missing).
NEEDS_gan    := $(PRETRAINED)/$(VOICE_NET).ckpt $(PRETRAINED)/face.ckpt
NEEDS_cgan   := $(NEEDS_gan)
NEEDS_cae    := $(NEEDS_gan)
NEEDS_cae-concat := $(NEEDS_gan)
NEEDS_dimnet := $(PRETRAINED)/face.ckpt
# regression: the judge, its target network (a face net of another seed) and the decoder
NEEDS_face_decoder := $(PRETRAINED)/face.ckpt $(PRETRAINED)/face-target.ckpt
NEEDS_regression   := $(NEEDS_face_decoder) $(PRETRAINED)/decoder.ckpt

.DEFAULT_GOAL := help
.PHONY: help install lock data train test test-all bench clean slurm test-slurm sweep sweep-check

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: METHOD=$(METHOD) DATA=$(DATA) ARGS='key=value ...'"

LOCK   := requirements.lock
UV     := $(BIN)/uv
UV_PIP := VIRTUAL_ENV=$(VENV) $(UV) pip

# Exactly the locked set (uv, itself locked, installs it four times faster than pip), then
# the package without resolving anything; then a check that torch and torchaudio are the
# locked pair and that their compiled parts load.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $$(grep '^uv==' $(LOCK))
	$(UV_PIP) sync --quiet $(LOCK)
	$(UV_PIP) install --quiet --no-deps --no-build-isolation -e .
	$(UV_PIP) check --quiet
	$(BIN)/python -m voice2face.environment
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

# Pretrained nets: resumable runs with fixed names, exported to $(PRETRAINED).
$(PRETRAINED)/%.ckpt: $(DATA)/manifest.json
	$(BIN)/voice2face train $* data.root=$(DATA) run.name=pretrain-$*-$(notdir $(DATA)) \
		run.resume=auto run.evaluate=false $(PRETRAIN_ARGS) --export $@

# The regression's target: trained like the judge but from another seed, so that it is not
# the network that measures it (the methods refuse the judge's weights as a target).
$(PRETRAINED)/face-target.ckpt: $(DATA)/manifest.json
	$(BIN)/voice2face train face seed=1 data.root=$(DATA) \
		run.name=pretrain-face-target-$(notdir $(DATA)) run.resume=auto $(PRETRAIN_ARGS) --export $@

# The face decoder on the target's features; after the judge, which it is checked against.
$(PRETRAINED)/decoder.ckpt: $(PRETRAINED)/face-target.ckpt | $(PRETRAINED)/face.ckpt
	$(BIN)/voice2face train face_decoder data.root=$(DATA) model.target=$< \
		run.name=pretrain-decoder-$(notdir $(DATA)) run.resume=auto $(PRETRAIN_ARGS) --export $@

train: $(STAMP) $(DATA)/manifest.json $(NEEDS_$(METHOD)) ## train METHOD (default gan) on DATA; ARGS='key=value ...'
	$(BIN)/voice2face train $(METHOD) data.root=$(DATA) $(ARGS)

test: $(STAMP) ## fast tests (CPU, tiny worlds made in tmp dirs)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## every test, including multi-process DDP runs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## print the benchmarks' numbers
	$(BIN)/python benchmarks/datamodule.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/cae.py --threads 1

# SLURM: one task per GPU (GPUS=0: TASKS CPU processes per node), srun, requeue on SIGUSR1.
NODES ?= 1
GPUS  ?= 1
TASKS ?= 2
SLURM_FLAGS = --nodes $(NODES) --gpus $(GPUS) --tasks $(TASKS) $(if $(RUN_NAME),--name '$(RUN_NAME)') \
	$(if $(WALLTIME),--time '$(WALLTIME)') $(if $(SBATCH),--sbatch '$(SBATCH)') $(if $(DRY),--dry-run)

slurm: $(STAMP) ## sbatch METHOD on NODES x GPUS (ARGS, RUN_NAME, WALLTIME, SBATCH='--partition=..'); DRY=1 prints it
	$(BIN)/python -m voice2face.slurm $(METHOD) $(SLURM_FLAGS) -- data.root=$(DATA) $(ARGS)

test-slurm: $(STAMP) ## a real one-node SLURM (apt, root): 2-task CPU DDP job, requeued and resumed
	tests/slurm/run.sh

# W&B: the W&B set-up is checked before the data and pretrained nets the trials need are made.
sweep: $(STAMP) sweep-check $(DATA)/manifest.json $(NEEDS_$(METHOD)) ## W&B sweep of METHOD (experiments/sweeps/) and an agent; COUNT=N trials; needs a W&B login
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
RESULTS_STARTED := $(shell date +%s)
.PHONY: results
results: $(STAMP) $(DATA)/manifest.json $(PRETRAINED)/$(VOICE_NET).ckpt $(NEEDS_regression) ## train or reuse every method on DATA, evaluate alike, write docs/results.md; ARGS, PRETRAIN_ARGS
	$(BIN)/voice2face results --data $(DATA) --out $(RESULTS) --started $(RESULTS_STARTED) \
		--pretrain-args '$(PRETRAIN_ARGS)' $(ARGS)

# The course's two commands: `make course` and `make test`.
# Each creates or reuses .venv and installs what it needs (once; a rerun reinstalls nothing).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARAMS ?= params/local.yaml
PYTEST_ARGS ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check --no-input

.PHONY: install course test test-slow test-aws test-all test-reliability bench-train bench-upload newman sam clean-notebooks lock clean stop

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) (torch 2.14.1 + torchvision 0.29.1 pinned; the first time takes a few minutes)"
	$(PIP) install --progress-bar off -q -c requirements/constraints.txt -e '.[dev]'
	@touch $(STAMP)

# make course DATA=/path/to/intel runs it on the real images (any layout the loader takes; relative paths from here)
course: $(STAMP)
	$(BIN)/cloudalliance course run --params $(PARAMS) $(if $(DATA),--set "DATA_SOURCE=$(DATA)",)

# Unit and integration tests (real SeaweedFS, real HTTP servers) and every notebook under nbval.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not aws" --nbval-lax --nbval-current-env tests notebooks $(PYTEST_ARGS)

# The long tests (real-data training, full uploads) that stay out of the default run.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -s -m "slow and not aws" tests $(PYTEST_ARGS)

# The aws branch of notebooks 02, 03, 05, 06 run twice against a local AWS emulator (moto's server, with a proxy
# whose training containers run the SageMaker SDK's own sm_train.sh and drivers), a two-instance job, a Ctrl-C
# during training (its job must be stopped), then the cleanup and the IAM policy check; no AWS account.
test-aws: $(STAMP)
	$(BIN)/python tests/aws_rehearsal/rehearse.py --passes 2 --interrupt

test-all: test test-slow

# The reliability suite alone, quick and full subsets (fuzzing, a hostile image server, kill/stop/restart faults,
# size and bomb limits; 127.0.0.1 only): prints the request tally and its measurements, and writes them to
# runs/reliability/. Its quick subset is part of `make test`, its full one of `make test-slow`.
test-reliability: $(STAMP)
	$(BIN)/python -m pytest -s -m "not aws" tests/reliability $(PYTEST_ARGS)

# The training benchmark (time to accuracy on this machine): TRAIN_DIR=... [TEST_DIR=...] make bench-train
TRAIN_DIR ?= ../shared/data/intel/seg_train
bench-train: $(STAMP)
	$(BIN)/cloudalliance bench train --train-dir $(TRAIN_DIR) --model-dir runs/bench-train/model \
		--checkpoint-dir runs/bench-train/checkpoints-$$(date +%s) $(if $(TEST_DIR),--test-dir $(TEST_DIR),)

# The upload benchmark: SRC=... ROUNDS=... make bench-upload (medians over ROUNDS rounds, order rotated)
SRC ?= ../shared/data/intel
ROUNDS ?= 3
bench-upload: $(STAMP)
	$(BIN)/cloudalliance bench upload $(SRC) --rounds $(ROUNDS)

# newman (Postman's CLI runner) into .tools/node, for the Postman collection's test; needs node and npm.
newman: $(STAMP)
	$(BIN)/python -c "from cloudalliance.api.postman import ensure_newman; print(ensure_newman())"

# The SAM CLI in its own environment (.tools/sam; it pins packages the course's environment cannot share), then
# `sam validate --lint` on lambda/template.yaml. Deploy with .tools/sam/bin/sam (lambda/README.md).
sam: $(STAMP)
	$(BIN)/python -c "from cloudalliance.api.lambda_package import sam_validate; p = sam_validate(); print(p.stdout + p.stderr); raise SystemExit(p.returncode)"

# Strip outputs and execution counts so notebooks are committed clean.
clean-notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

# Stop the local servers (embedded S3, endpoint, gateway) left running by an interactive session.
stop: $(STAMP)
	$(BIN)/cloudalliance services stop

lock: $(STAMP)
	{ echo "# Exact versions the course was tested with; 'make' installs with these as constraints."; \
	  echo "# Regenerate with: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v '^cloudalliance'; } > requirements/constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache

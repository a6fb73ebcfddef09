# One task runner behind README's two commands and CI (.ci/run calls `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps run test quick lint format lock image image-test clean

# The venv is (re)built whenever pyproject.toml or a lock changes. It installs exactly the
# versions the suite was run with: the locks, as pip constraints (`make lock` rewrites them).
$(STAMP): pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -c requirements-dev.lock -e '.[dev]'
	touch $@

install: $(STAMP)

run: $(STAMP)  ## kd run on the default config (extra arguments: make run ARGS="--set seed=1")
	$(BIN)/kd run $(ARGS)

# The team-stack test runs a throwaway PostgreSQL cluster: Debian's postgresql package,
# installed here when missing (as root, e.g. on CI); without root, install it yourself.
system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	  :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "make system-deps: PostgreSQL is missing; run as root or: sudo apt-get install postgresql" >&2; \
	fi

test: $(STAMP) system-deps  ## lint, format check, type check, then the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

quick: $(STAMP)  ## the loop while working: lint, types, the tests not marked slow
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

LOCK_VENV := .lock-venv
# CUDA-only wheels that torch's default (CUDA) build pulls in here: not part of the CPU image.
CUDA_ONLY := ^(nvidia-|triton==|cuda-)
# What a Python older than this venv's pulls in (Debian 12's 3.11.2: redis needs it before
# 3.11.3), pinned for the images built on such a base.
OLD_PYTHON_ONLY := async-timeout==5.0.1 ; python_full_version < "3.11.3"
FREEZE := $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -Ev '^kd-pipeline( |=|@)'
lock:  ## re-resolve pyproject.toml's ranges in a fresh venv: requirements.lock (what the
       ## package needs: the image's lock) and requirements-dev.lock (what the dev tools add)
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet .
	{ echo '# What kd-pipeline needs, exactly (pip constraints for `make install` and the image).'; \
	  echo '# Written by `make lock` from a fresh venv; run `make test` on it before committing.'; \
	  { $(FREEZE) | grep -Ev '$(CUDA_ONLY)'; echo '$(OLD_PYTHON_ONLY)'; } | sort -f; } > requirements.lock.tmp
	$(LOCK_VENV)/bin/python -m pip install --quiet '.[dev]'
	{ echo '# What the dev tools (pytest, ruff, mypy) add to requirements.lock. Written by `make lock`.'; \
	  $(FREEZE) | grep -Ev '$(CUDA_ONLY)' | grep -vxFf requirements.lock.tmp; } > requirements-dev.lock
	mv requirements.lock.tmp requirements.lock
	rm -rf $(LOCK_VENV) build

# The pipeline image. CONTAINER=podman works the same; IMAGE_ARGS passes build arguments, e.g.
# IMAGE_ARGS="--build-arg BASE_IMAGE=localhost/kd-debian-base:bookworm" (scripts/).
CONTAINER ?= docker
IMAGE ?= kd-pipeline
image:  ## build the pipeline image (see the Dockerfile's build arguments)
	$(CONTAINER) build $(IMAGE_ARGS) -t $(IMAGE) .

image-test: $(STAMP)  ## build the image with podman and run kd in it (minutes; not in CI)
	KD_IMAGE_TEST=1 $(BIN)/pytest -n 0 -p no:cacheprovider tests/test_image.py

clean:
	rm -rf kd-work mlflow.db mlruns .pytest_cache .ruff_cache

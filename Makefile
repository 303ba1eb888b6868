# Two entry points (see README): `make demo` and `make test`. Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint venv bench clean images

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/cxr-triage demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# ruff (pycodestyle, pyflakes, import order, bugbear, pyupgrade) and mypy, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The fleet's images where no registry can be reached (README: "Running a fleet with docker compose"): the Debian
# base by debootstrap (only when missing), cxr-triage on it with this host's pip sources, Redis and PostgreSQL from
# Debian's packages. Prints how long each took and each image's size. IMAGES="app" rebuilds one only.
images:
	bash deploy/docker/build-images.sh $(IMAGES)

clean:
	rm -rf var test-output

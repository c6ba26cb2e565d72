# Two stacks share this checkout (see README): legacy = Python 3.10 + TFX 1.16 on
# glibc < 2.39; modern = Python 3.13 + TFX 1.21 on glibc >= 2.39 (or in the Debian 13 root).
GLIBC := $(shell ldd --version 2>/dev/null | head -1 | awk '{print $$NF}')
DEFAULT_STACK := $(shell printf '%s\n2.39\n' "$(GLIBC)" | sort -V | head -1 | grep -qx 2.39 && echo modern || echo legacy)
STACK ?= $(DEFAULT_STACK)
ifeq ($(STACK),legacy)
# pyenv shims refuse python3.10 unless it is the selected version: try the real binary too.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10; do $$p -c 'import sys' >/dev/null 2>&1 && { command -v $$p; break; }; done)
else
PYTHON ?= python3
endif
VENV := .venv-$(STACK)
BIN := $(VENV)/bin
PYTEST_ARGS ?=
WORKDIR ?= demo-output

.PHONY: setup demo test bench clean-venv lock

setup: $(VENV)/.installed

$(VENV)/.installed: requirements/$(STACK).txt setup.py
	@if [ ! -x $(BIN)/python ] && [ -z "$(PYTHON)" ]; then \
	  echo "make setup: STACK=$(STACK) needs Python $(if $(filter legacy,$(STACK)),3.10,3) and none was found (stock Debian 12 has 3.11 only): install it (pyenv install 3.10, or your distribution's python3.10) and re-run, or use STACK=modern (Python 3.13 on glibc >= 2.39: Debian 13, or a Debian 13 container on Debian 12). See README, Prerequisites." >&2; \
	  exit 2; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip sync --python $(BIN)/python requirements/$(STACK).txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@
	@echo "stack $(STACK) ready in $(VENV)"

demo: setup
	$(BIN)/ptum demo --workdir $(WORKDIR)

test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

lock:
	$(BIN)/uv pip compile requirements/legacy.in --python-version 3.10 --python-platform x86_64-manylinux_2_36 -o requirements/legacy.txt --no-header
	$(BIN)/uv pip compile requirements/modern.in --python-version 3.13 --python-platform x86_64-manylinux_2_39 -o requirements/modern.txt --no-header

clean-venv:
	rm -rf $(VENV)

# Two commands on a fresh Debian/Ubuntu machine with Python 3.10+ and root (or sudo) for apt:
#   make demo   synthetic heart set → prepare → train → export → the service replays a held-back recording
#   make test   the whole test suite
# Every knob below can be overridden: make demo DATA=../shared/data/yaseen2018 PRESET=heart SIZE=128
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
APT_PKGS   := libportaudio2 libasound2 alsa-utils systemd chromium
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DATA       ?=
PRESET     ?= heart
SIZE       ?= 64
EPOCHS     ?= 8
NAME       ?= demo-heart
RAW        := $(if $(DATA),$(DATA),data/$(NAME)-raw)
DATASET    := data/$(NAME)
MODEL      := models/$(NAME)

.PHONY: demo test venv apt clean bench help

help:
	@echo "make demo    run the main job end to end on a built-in synthetic default (DATA=folder for real data)"
	@echo "make test    run the tests"
	@echo "make bench   run the benchmarks in bench/ (long)"

apt: $(VENV)/.apt
$(VENV)/.apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(VENV)/.apt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[train,jetson,dev]'
	touch $@

demo: venv
	@set -euo pipefail; \
	$(PY) train_host/synthesize.py $(RAW) --held-out data/$(NAME)-heldout.wav; \
	$(PY) deploy_jetson/render.py --preset $(PRESET) --size $(SIZE) $(RAW) data/$(NAME)-images; \
	echo "Done. Spectrograms in data/$(NAME)-images/"

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) bench/render.py
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/service.py

clean:
	rm -rf runs data/demo-* models/demo-*

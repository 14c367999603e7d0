# Two commands on a fresh Debian/Ubuntu machine with Python 3.10+ and root (or sudo) for apt:
#   make demo   synthetic heart set → prepare → train → export → the service replays a held-back recording
#   make test   the whole test suite
# Every knob below can be overridden: make demo DATA=../shared/data/yaseen2018 PRESET=heart SIZE=128 NAME=yaseen
# (DATA: a folder with one subfolder per class; CLASSMAP=AS_New=AS,... renames classes)
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
APT_PKGS   := libportaudio2 libasound2 alsa-utils systemd chromium
# The Nano's software (JetPack 4.6: Python 3.6, numpy 1.19; onnxruntime 1.10 is the last for 3.6), so the tests run
# the device path on it too (tests/test_device_stack.py); built only where a Python 3.6 is installed.
DEVICE_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.6 $(HOME)/.pyenv/versions/3.6*/bin/python3.6))
DEVICE_VENV   := .venv-device
DEVICE_PKGS   := numpy==1.19.5 onnxruntime==1.10.0
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DATA       ?=
PRESET     ?= heart
SIZE       ?= 64
EPOCHS     ?= 8
NAME       ?= demo-heart
CLASSMAP   ?=
TRAIN_FLAGS ?= --no-pretrained --no-progress --force
RAW        := $(if $(DATA),$(DATA),data/$(NAME)-raw)
HELDOUT    := data/$(NAME)-heldout.wav
DATASET    := data/$(NAME)
MODEL      := models/$(NAME)
RUN        := runs/$(NAME)

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

venv: $(VENV)/.installed $(DEVICE_VENV)/.installed
$(VENV)/.installed: pyproject.toml $(VENV)/.apt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[train,jetson,dev]'
	touch $@

# Optional: without Python 3.6 (or when its packages cannot be fetched) the device-stack tests skip and say so.
$(DEVICE_VENV)/.installed: Makefile
	@if [ -z "$(DEVICE_PYTHON)" ]; then \
	  echo "no Python 3.6 here: tests/test_device_stack.py will skip (set DEVICE_PYTHON=/path/to/python3.6)"; \
	elif $(DEVICE_PYTHON) -m venv $(DEVICE_VENV) && $(DEVICE_VENV)/bin/pip install -q 'pip>=21,<22' \
	     && $(DEVICE_VENV)/bin/pip install -q $(DEVICE_PKGS); then \
	  touch $@; \
	else \
	  rm -rf $(DEVICE_VENV); \
	  echo "WARNING: could not build $(DEVICE_VENV) from $(DEVICE_PYTHON): the device-stack tests will skip"; \
	fi

demo: venv
	@set -euo pipefail; start=$$(date +%s); \
	if [ -z "$(DATA)" ]; then \
	  $(PY) train_host/synthesize.py $(RAW) --held-out $(HELDOUT); \
	fi; \
	$(PY) train_host/prepare.py $(RAW) $(DATASET) --adapter folder --preset $(PRESET) --size $(SIZE) \
	  $(if $(CLASSMAP),--class-map $(CLASSMAP)) --workers 2 --force; \
	$(PY) train_host/train.py $(DATASET) --model-dir $(MODEL) --epochs $(EPOCHS) $(TRAIN_FLAGS); \
	replay=$(if $(DATA),$$($(PY) -c "import json; d = json.load(open('$(DATASET)/prepare.json')); \
	  print(next(i['source'] for i in d['images'] if i['split'] == 'test'))"),$(HELDOUT)); \
	echo; echo "== the service replays $$replay (never seen in training) =="; \
	$(PY) deploy_jetson/service.py --model-dir $(MODEL) --source "file:$$replay" --fast --output $(RUN) \
	  --save-images $(RUN)/images; \
	echo; echo "Done in $$(( $$(date +%s) - start )) s.$(if $(DATA),, Synthetic demo data: the numbers mean nothing clinically.)"; \
	echo "  decisions, one JSON line per window:  $(RUN)/results.jsonl"; \
	echo "  latest overlay (what the Nano shows): $(RUN)/latest.png"; \
	echo "  spectrograms the network saw:         $(RUN)/images/"; \
	echo "  model, metrics, plots, report:        $(MODEL)/ (report.md, confusion_matrix.png)"; \
	echo "  one file, imagenet.py style:          $(PY) deploy_jetson/classify.py --model=$(MODEL)/resnet18.onnx --labels=$(MODEL)/labels.txt $$replay overlay.png"; \
	echo "  live from a microphone:               $(PY) deploy_jetson/service.py --model-dir $(MODEL) --source mic"

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) bench/render.py
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/service.py

clean:
	rm -rf runs data/demo-* models/demo-*

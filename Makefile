# Two commands on a fresh Debian/Ubuntu machine with Python 3.10+ and root (or sudo) for apt:
#   make demo   synthetic heart set → prepare → train → export → the service replays a held-back recording
#   make test   the whole test suite
# Every knob below can be overridden: make demo DATA=../shared/data/yaseen2018 PRESET=heart SIZE=128 NAME=yaseen
# (DATA: a folder with one subfolder per class; CLASSMAP=AS_New=AS,... renames classes)
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# System packages: the demo needs PortAudio and ALSA's library (sounddevice, the microphone source) and nothing
# else; the tests also use ALSA's tools, systemd (systemd-analyze checks the unit) and chromium (the status page,
# rendered headless).  make demo installs APT_DEMO and pip's train+jetson extras; make venv / make test all of it.
APT_DEMO   := libportaudio2 libasound2
APT_TEST   := alsa-utils systemd chromium
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
# Only for the built-in synthetic set (no DATA): its heart sounds fill the bottom 8 of the 64 image rows, which
# train.py's default frequency masks (2 × up to 10 % of the height) blank in ~40 % of the images, and time masks
# cut S3s out (both teach 'extra' on pictures without one); batches of 16 give 12 steps an epoch.  One thread:
# 8 epochs of 185 images are little work, and beside one busy core two bfloat16 threads made the whole demo 6×
# slower (249 s against 41 s).  Measured on 5 corpus/training seeds: val at 1.0 by the 3rd epoch, 27 of 27 test
# recordings right, the held-out murmur at 100 %; tests/test_demo.py checks the floor.
DEMO_TRAIN_FLAGS ?= -b 16 --aug-freq-masks 0 --aug-time-masks 0 --threads 1
RAW        := $(if $(DATA),$(DATA),data/$(NAME)-raw)
HELDOUT    := data/$(NAME)-heldout.wav
DATASET    := data/$(NAME)
MODEL      := models/$(NAME)
RUN        := runs/$(NAME)

# make model RECIPE=physionet2016 DATA=/path/to/physionet2016   (or yaseen2018, icbhi2017: train_host/recipes.py)
#   trains with the settings bench/accuracy.py validated, tests on a held-back split, exports MODEL_DIR for
#   systemd/install.sh and prints how long it took.  EPOCHS=/SIZE= replace the recipe's (a quick try: EPOCHS=1
#   SIZE=32); PREPARED= the images' folder (default data/<recipe>); FORCE=1 replaces an earlier model.
RECIPE     ?=
MODEL_DIR  ?= $(if $(RECIPE),models/$(RECIPE))
PREPARED   ?=
FORCE      ?=
# the demo's EPOCHS and SIZE defaults are not the recipe's: only values given on the command line (or in the
# environment) replace the recipe's
given = $(filter command% environment%,$(origin $(1)))

.PHONY: demo test venv apt venv-demo apt-demo clean bench help model

help:
	@echo "make demo    run the main job end to end on a built-in synthetic default (DATA=folder for real data)"
	@echo "make model   train a deployable model: make model RECIPE=physionet2016 DATA=/path/to/physionet2016"
	@echo "make test    run the tests"
	@echo "make bench   run the benchmarks in bench/ (long)"

# $(call apt_install,PACKAGES): apt-get install those of PACKAGES that dpkg does not know as installed
apt_install = missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# what make demo needs (no test tools)
apt-demo: $(VENV)/.apt-demo
$(VENV)/.apt-demo:
	@$(call apt_install,$(APT_DEMO))
	@mkdir -p $(VENV) && touch $@

# everything (make test); it holds the demo's too
apt: $(VENV)/.apt
$(VENV)/.apt:
	@$(call apt_install,$(APT_DEMO) $(APT_TEST))
	@mkdir -p $(VENV) && touch $@ $(VENV)/.apt-demo

venv-demo: $(VENV)/.demo-installed
$(VENV)/.demo-installed: pyproject.toml $(VENV)/.apt-demo
	@if [ $(VENV)/.installed -nt pyproject.toml ]; then touch $@; else \
	  set -x; $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -q --upgrade pip \
	  && $(VENV)/bin/pip install -q -e '.[train,jetson]' && touch $@; fi

venv: $(VENV)/.installed $(DEVICE_VENV)/.installed
$(VENV)/.installed: pyproject.toml $(VENV)/.apt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[train,jetson,dev]'
	touch $@ $(VENV)/.demo-installed

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

demo: venv-demo
	@set -euo pipefail; start=$$(date +%s); \
	if [ -z "$(DATA)" ]; then \
	  $(PY) train_host/synthesize.py $(RAW) --held-out $(HELDOUT); \
	fi; \
	$(PY) train_host/prepare.py $(RAW) $(DATASET) --adapter folder --preset $(PRESET) --size $(SIZE) \
	  $(if $(CLASSMAP),--class-map $(CLASSMAP)) --workers 2 --force; \
	$(PY) train_host/train.py $(DATASET) --model-dir $(MODEL) --epochs $(EPOCHS) $(TRAIN_FLAGS) \
	  $(if $(DATA),,$(DEMO_TRAIN_FLAGS)); \
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

model: venv-demo
	@$(PY) train_host/model.py "$(RECIPE)" "$(DATA)" $(if $(MODEL_DIR),--model-dir "$(MODEL_DIR)") \
	  $(if $(PREPARED),--prepared "$(PREPARED)") $(if $(call given,EPOCHS),--epochs "$(EPOCHS)") \
	  $(if $(call given,SIZE),--size "$(SIZE)") $(if $(filter-out 0,$(FORCE)),--force)

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) bench/render.py
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/service.py

clean:
	rm -rf runs data/demo-* models/demo-*

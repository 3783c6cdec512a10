# hearproto: `make book` builds everything, `make test` checks everything.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

# the Python to build the venv with: $PYTHON, else the newest of 3.13, 3.12 and 3.11 found
# (one that runs: a pyenv shim of a version that is not active does not)
PYTHON ?= $(or $(firstword $(foreach v,3.13 3.12 3.11,$(shell python$(v) -c '' 2>/dev/null && echo python$(v)))),$(error no working python3.13, 3.12 or 3.11 found; set PYTHON))
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The instruments' sample banks: Debian's packages, unpacked into the venv (no root needed;
# hearproto.data.banks finds them there, or installed system-wide).
BANKS_DIR := $(VENV)/share/hearproto-banks
BANK_PACKAGES := fluid-soundfont-gm musescore-general-soundfont timgm6mb-soundfont freepats
BANKS_STAMP := $(BANKS_DIR)/.installed
SCALE ?= full
# This machine's pip configuration names local package folders that do not exist; hide the
# warnings about them, keep everything else pip prints.
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }
# Tests are deterministic on CPU with a fixed thread count.
TEST_ENV := OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 MPLBACKEND=agg PYTHONHASHSEED=0
# nbval references: every experiment executed at `ci` scale (the per-dataset ones on
# instruments), only the checked outputs kept.
REFERENCE_NOTEBOOKS := tests/notebooks
# JavaScript the book serves itself (offline): pinned in package.json, copied at build time.
ASSETS := book/_assets
NPM_QUIET := { grep -v 'Unknown user config "nodedir"' || true; }
WIDGETS_DIST := node_modules/@jupyter-widgets/html-manager/dist
# the Font Awesome and icon fonts embed-amd.js loads (by hashed name, beside its modules)
WIDGETS_FONTS := woff2 woff ttf eot svg
# Loaded between RequireJS and embed-amd.js (see _config.yml).
WIDGETS_SETUP := book/_ext/embed-setup.js
# The book's own style sheet (a wider article column for the grids of players).
BOOK_CSS := book/_ext/hearproto.css

.PHONY: help install banks assets book experiments html reproduce test unit-tests references clean

help:
	@echo "make book   install if needed, run the experiments (SCALE=$(SCALE)), build _build/html"
	@echo "make test   install if needed, run the unit and notebook tests"
	@echo "make reproduce   train every run of the full scale afresh (hours on a CPU), then the book"
	@echo "make install | banks | experiments | html | references | clean"

install: $(STAMP) $(BANKS_STAMP)

banks: $(BANKS_STAMP)

# `apt-get download` needs no root, only package lists; as root on a machine without them,
# they are fetched first. About 200 MB of packages, 270 MB unpacked.
$(BANKS_STAMP):
	@echo "Unpacking the sample banks ($(BANK_PACKAGES)) into $(BANKS_DIR)"
	@command -v apt-get > /dev/null || { echo "make banks: apt-get not found; install the \
	Debian packages $(BANK_PACKAGES) or their files by other means and point HEARPROTO_BANKS \
	at the folder that holds their usr/share"; exit 1; }
	rm -rf $(BANKS_DIR) && mkdir -p $(BANKS_DIR)/debs
	cd $(BANKS_DIR)/debs && { apt-get download -q $(BANK_PACKAGES) 2> /dev/null \
		|| { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -q $(BANK_PACKAGES); }; }
	for deb in $(BANKS_DIR)/debs/*.deb; do dpkg-deb -x "$$deb" $(BANKS_DIR); done
	rm -rf $(BANKS_DIR)/debs
	@touch $@

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing hearproto and its pinned dependencies into $(VENV) (about 90 s the first time)"
	# torch first, alone: `torch==2.13.0` resolves to the CPU wheel on machines without CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install --quiet -e ".[book,test]" 2>&1 | $(PIP_QUIET)
	# the instruments renderer, without its unused pyaudio dependency (needs PortAudio headers)
	$(BIN)/python -m pip install --quiet --no-deps tinysoundfont==0.3.7 2>&1 | $(PIP_QUIET)
	@touch $(STAMP)

assets: $(ASSETS)/.stamp

# The ipywidgets embed manager (embed-amd.js carries the controls) with its fonts, RequireJS
# and the set-up file; _config.yml points myst-nb at them.
$(ASSETS)/.stamp: package.json package-lock.json $(WIDGETS_SETUP) $(BOOK_CSS)
	npm ci --no-audit --no-fund --ignore-scripts 2>&1 | $(NPM_QUIET)
	rm -rf $(ASSETS) && mkdir -p $(ASSETS)/widgets
	cp -r node_modules/mathjax/es5 $(ASSETS)/mathjax
	cp node_modules/requirejs/require.js $(WIDGETS_DIST)/embed-amd.js $(ASSETS)/widgets/
	cp $(addprefix $(WIDGETS_DIST)/*.,$(WIDGETS_FONTS)) $(ASSETS)/widgets/
	cp $(WIDGETS_SETUP) $(ASSETS)/widgets/embed-setup.js
	cp $(BOOK_CSS) $(ASSETS)/
	@touch $@

experiments: install
	$(BIN)/hearproto experiments run --scale $(SCALE)

html: install assets
	$(BIN)/jupyter-book build book --config _config.yml --path-output . --warningiserror --keep-going
	@echo "The book is in $(CURDIR)/_build/html/index.html"

book: experiments html

# Everything from scratch: the full scale's runs trained (not unpacked from weights/; an
# interrupted `make reproduce` resumes them), every notebook executed on them, the book built.
# WORKERS processes of one thread each train the runs side by side, each taking the next run
# no other holds; their logs go to logs/. The data are prepared first, by one process.
WORKERS ?= 2
reproduce: install assets
	$(BIN)/hearproto data prepare instruments
	$(BIN)/hearproto data prepare speakers
	@mkdir -p logs
	@echo "training in $(WORKERS) processes; logs in logs/reproduce-*.log"
	@pids=""; for i in $$(seq 1 $(WORKERS)); do \
		HEARPROTO_RETRAIN=1 $(BIN)/hearproto experiments train --scale full --seeds 0,1,2 --threads 1 \
			> logs/reproduce-$$i.log 2>&1 & pids="$$pids $$!"; sleep 10; \
	done; status=0; for p in $$pids; do wait $$p || status=1; done; \
	if [ $$status != 0 ]; then echo "a training process failed: see logs/reproduce-*.log"; fi; \
	exit $$status
	$(BIN)/hearproto experiments run --scale full --retrain
	$(MAKE) html

# Re-make the nbval references after changing a notebook or what it prints (then commit them).
references: install
	$(TEST_ENV) $(BIN)/hearproto experiments run --scale ci --output-dir $(REFERENCE_NOTEBOOKS) \
		--checked-outputs-only --datasets instruments

unit-tests: install assets
	$(TEST_ENV) $(BIN)/python -m pytest tests

test: install assets
	$(TEST_ENV) $(BIN)/python -m pytest tests --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg

clean:
	rm -rf _build .pytest_cache $(ASSETS) node_modules

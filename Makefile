# gzfast: the README's commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= data/shards
SYNTH ?= data/synthetic
# Empty DATA: synthesize a GZ2-like set into $(SYNTH) first.
DATA ?=
N_TRAIN ?= 4000
N_TEST ?= 500
PYTEST_ARGS ?=

.PHONY: venv shards verify test run clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

shards: venv
ifeq ($(strip $(DATA)),)
	$(PY) -m shard_tools synth --out $(SYNTH) --n-train $(N_TRAIN) --n-test $(N_TEST) --seed 0
	$(PY) -m shard_tools pack --data $(SYNTH) --out $(OUT)
else
	$(PY) -m shard_tools pack --data $(DATA) --out $(OUT)
endif

verify: venv
	$(PY) -m shard_tools verify $(OUT) --decode

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf data runs

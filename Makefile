# gzfast: the README's commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
# What targets need installed first; `INSTALL=` (with PY=...) runs them in an existing environment.
INSTALL ?= $(VENV)/.installed
OUT ?= data/shards
SYNTH ?= data/synthetic
# Empty DATA: synthesize a GZ2-like set into $(SYNTH) first.
DATA ?=
# Or any catalogue (CSV/Parquet): CATALOG=FILE IMAGES=DIR [TREE=gz2-kaggle|gz2|gz-decals|FILE.yaml] [PACK_ARGS=...]
CATALOG ?=
IMAGES ?=
TREE ?= gz2-kaggle
PACK_ARGS ?=
N_TRAIN ?= 4000
N_TEST ?= 500
PYTEST_ARGS ?=
# The main job: a small CPU configuration with the curriculum; RUN_ARGS adds or overrides flags.
RUN_CONFIG ?= gzfast/configs/cpu_small.yaml
RUN_ARGS ?=

.PHONY: venv shards verify lint test test-fast run compare gpu-check gpu-test gpu-data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(INSTALL)

shards: $(INSTALL)
ifneq ($(strip $(CATALOG)),)
	$(PY) -m shard_tools pack --catalog $(CATALOG) --images $(IMAGES) --tree $(TREE) --out $(OUT) $(PACK_ARGS)
else ifeq ($(strip $(DATA)),)
	$(PY) -m shard_tools synth --out $(SYNTH) --n-train $(N_TRAIN) --n-test $(N_TEST) --seed 0
	$(PY) -m shard_tools pack --data $(SYNTH) --out $(OUT)
else
	$(PY) -m shard_tools pack --data $(DATA) --out $(OUT)
endif

verify: $(INSTALL)
	$(PY) -m shard_tools verify $(OUT) --decode

lint: $(INSTALL)
	$(PY) -m ruff check .

test: $(INSTALL)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The edit loop: everything but the tests marked slow (CI runs them all).
test-fast: $(INSTALL)
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

# accelerate launch sets OMP_NUM_THREADS=1 unless told: give torch every core for this CPU job.
THREADS ?= $(shell nproc 2>/dev/null || echo 2)

LAUNCH = $(PY) -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no \
	--dynamo_backend no --num_cpu_threads_per_process $(THREADS)

run: shards
	$(LAUNCH) gzfast/train.py --config $(RUN_CONFIG) --curriculum --shards $(OUT) $(RUN_ARGS)

# The curriculum experiment on the CPU: make run's recipe (25 epochs), 2 seeds, three schedules: plain; the
# default curriculum at 25 epochs (20/20/60 %, what `--curriculum` gives); and the study's direct high -> all,
# with the same 5-epoch high stage, so it differs from the default only by skipping high+medium. Each run is
# launched as make run launches it. Run again with the same COMPARE_OUT, it continues where it stopped.
COMPARE_OUT ?= runs/compare
COMPARE_SEEDS ?= 2
COMPARE_SCHEDULES ?= all:25;high:5,high+medium:5,all:15;high:5,all:20
COMPARE_ARGS ?=

compare: shards
	$(PY) benchmarks/curriculum.py --shards $(OUT) --config $(RUN_CONFIG) --seeds $(COMPARE_SEEDS) \
		--schedules "$(COMPARE_SCHEDULES)" --out $(COMPARE_OUT) --launch "$(LAUNCH)" $(COMPARE_ARGS)

# The GPU machine has torch but no package index and no venv: the check runs on its python3, and DALI
# comes as the bundle of tools/dali-bundle.sh, carried as .dali-bundle/p0..p2 (or in
# a dali-parts/ folder beside the checkout; see benchmarks/gpu_check.py). The check runs in stages within GPU_BUDGET seconds, each
# written to GPU_CHECK_OUT when it ends. `make gpu-data` first copies the real JPEGs the GPU tests read
# (GZ2=folder) into the git-ignored .gz2/ (which travels with the checkout), and pytest (pure Python) into
# .gpu-site/ for a machine that has none (the check uses it only there). `make gpu-test` runs every GPU
# test, the long compiled resume runs included, on the same set-up.
GPU_PY ?= python3
GPU_BUDGET ?= 360
GPU_CHECK_OUT ?=
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PY) benchmarks/gpu_check.py --budget-s $(GPU_BUDGET) $(if $(GPU_CHECK_OUT),--out $(GPU_CHECK_OUT)) \
		$(if $(SHARDS),--shards $(SHARDS)) $(GPU_CHECK_ARGS)

gpu-test:
	PYTHONUNBUFFERED=1 $(GPU_PY) benchmarks/gpu_check.py --pytest "-m gpu tests $(PYTEST_ARGS)"

# GZ2: the folder of real GZ2 files the tests read (test_images/, train_images/, training_solutions_subset.csv)
GZ2 ?= $(GZ2_SHARED)
gpu-data: $(INSTALL)
	@test -n "$(GZ2)" -a -d "$(GZ2)/test_images" -a -d "$(GZ2)/train_images" || { echo "gpu-data: error: \
	GZ2=FOLDER must name the real GZ2 files (test_images/, train_images/, training_solutions_subset.csv), \
	e.g. make gpu-data GZ2=path/to/gz2" >&2; exit 2; }
	rm -rf .gz2 .gpu-site && mkdir -p .gz2
	cp -r $(GZ2)/test_images $(GZ2)/train_images .gz2/
	head -n 51 $(GZ2)/training_solutions_subset.csv > .gz2/training_solutions_subset.csv
	$(PY) -m pip install -q --target .gpu-site --no-compile pytest

clean:
	rm -rf data runs

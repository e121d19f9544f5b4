# rigor: every target sets up what it needs. Quick start: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rigor-installed
OUT ?= results
CONFIG ?= configs/experiment/digits_baseline.yaml

XAI_CONFIG ?= configs/experiment/digits_canvas.yaml

.PHONY: setup demo train_and_xai leaderboard test lint pytest schema lock bench hostile clean

setup: $(STAMP)

# Re-install whenever the lock or the package metadata changes. uv installs the lock's exact
# pins from the package index in seconds (pip takes minutes), compiled to bytecode as pip
# does (without it, every interpreter start under PYTHONDONTWRITEBYTECODE compiles again).
$(STAMP): locks/requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "rigor needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet uv==0.13.8
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r locks/requirements.lock "setuptools>=77" wheel
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole chain on the embedded digits, through the manifest alone:
# train -> calibrate (val_calib) -> eval (val_test) -> xai -> export -> predict.
demo: setup
	@set -e; \
	manifest=$$($(PY) scripts/train.py --config $(CONFIG) --set run.output_root=$(OUT)); \
	run=$$(dirname $$manifest); \
	$(PY) scripts/manifest.py validate $$manifest; \
	$(PY) scripts/calibrate.py --from-manifest $$manifest > /dev/null; \
	$(PY) scripts/eval.py --from-manifest $$manifest > /dev/null; \
	$(PY) scripts/xai.py --from-manifest $$manifest > /dev/null; \
	$(PY) scripts/export.py --from-manifest $$manifest > /dev/null; \
	$(PY) scripts/predict.py --bundle $$run/bundle --split val_test --output $$run/predict/val_test.csv; \
	$(PY) scripts/manifest.py verify $$manifest; \
	$(PY) scripts/manifest.py show $$manifest; \
	echo "demo outputs:"; \
	echo "  train      $$run/  (checkpoints/, predictions/, logs/, metrics.json)"; \
	echo "  calibrate  $$run/calibration/  (thresholds.json, conformal.json, scrcparams.json, sweep.csv, reliability.png)"; \
	echo "  eval       $$run/eval/  (metrics.json, metrics.csv, *.png)"; \
	echo "  xai        $$run/xai/  (summary.json, attributions.npz, overlays/, grid_digit.png)"; \
	echo "  export     $$run/bundle/  (model.safetensors, policy.json, bundle.json)"; \
	echo "  predict    $$run/predict/val_test.csv"; \
	echo "  manifest   $$manifest"

# Train, then explain, finding the model through the manifest alone (digits on a noisy
# canvas, so the mask-mass and pointing-game checks have ground truth).
train_and_xai: setup
	@set -e; \
	manifest=$$($(PY) scripts/train.py --config $(XAI_CONFIG) --set run.output_root=$(OUT)); \
	summary=$$($(PY) scripts/xai.py --from-manifest $$manifest); \
	$(PY) scripts/manifest.py verify $$manifest; \
	echo "xai summary: $$summary"; cat $$summary

# The HEST-Benchmark leaderboard on generated task folders (configs/bench/tiles.yaml): two
# task folders of 224x224 tiles, random weights of a timm ViT-S/16 and a ResNet-50 as local
# safetensors files, then every encoder x task cell, reusing finished cells on a rerun.
leaderboard: setup
	@set -e; \
	test -f results/data/hest_bench/TILES_B/var_50genes.json || $(PY) scripts/make_tiles.py \
	  --out results/data/hest_bench --bench-tasks TILES_A TILES_B --patients 6 --splits 3 \
	  --tiles-per-patient 40 --size 224 > /dev/null; \
	test -f results/weights/resnet50.safetensors || $(PY) scripts/random_weights.py \
	  --source torchvision --arch resnet50 --out results/weights/resnet50.safetensors > /dev/null; \
	test -f results/weights/vit_small_patch16_224.safetensors || $(PY) scripts/random_weights.py \
	  --source timm --arch vit_small_patch16_224 \
	  --out results/weights/vit_small_patch16_224.safetensors > /dev/null; \
	board=$$($(PY) scripts/probe.py --bench configs/bench/tiles.yaml); \
	cat $$board/leaderboard.md

test: setup lint pytest

# ruff, black, mypy, nbstripout, the configs/schemas check and actionlint (.pre-commit-config.yaml)
lint: setup
	$(VENV)/bin/pre-commit run --all-files --show-diff-on-failure

pytest: setup
	$(VENV)/bin/pytest -q -m "not gpu"

schema: setup
	$(PY) -m rigor.schema --write

# About 200 commands that tamper, race, kill and feed bad input (issue 30); ~4 min.
hostile: setup
	$(PY) benchmarks/hostile.py --out results/hostile

bench: setup
	$(VENV)/bin/pytest benchmarks --benchmark-only -o addopts="" -o python_files="bench_*.py"
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_hest.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/bench_epoch.py
	$(PY) benchmarks/bench_stages.py

# Regenerate the pip lock from pyproject.toml in a throw-away environment.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[dev]' submitit
	{ echo "# rigor pip lock: every distribution of the dev environment, pinned (regenerate: make lock)."; \
	  echo "# torch 2.14.1 + torchvision 0.29.2 come from the package index (their CUDA builds run on CPU)."; \
	  .lock-venv/bin/pip freeze --exclude-editable | sort -f; } > locks/requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(OUT) .mypy_cache .ruff_cache

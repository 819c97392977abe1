# anomaly-diff: `make run` and `make test` are all a fresh clone needs (both install first when needed).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/anomaly-diff
INSTALLED := $(VENV)/.installed
RUNS_DIR ?= runs

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint data bench bench-metrics bench-infer bench-memory bench-train bench-export sweep clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-25s %s\n", $$1, $$2}'

install: $(INSTALLED) ## Create .venv and install the package (editable, with the dev extra); skipped when unchanged

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

run: $(INSTALLED) ## DeCo-Diff on the embedded data: stage-1 autoencoder (reused if made by the same config), train, test
	$(CLI) fit --config configs/autoencoder/embedded.yaml --reuse_latest=true --test_after_fit=false \
		--trainer.logger.init_args.save_dir=$(RUNS_DIR)
	$(CLI) fit --config configs/deco_diff/embedded.yaml --trainer.logger.init_args.save_dir=$(RUNS_DIR) \
		--model.init_args.autoencoder=$(RUNS_DIR)/autoencoder/embedded/latest/autoencoder

# `make run`'s stage 1 (the small autoencoder DeCo-Diff works in) trains only when runs/autoencoder/embedded/latest
# was made by another config (it says what changed); its own test (the reconstruction-error baseline) is skipped
# here: `anomaly-diff fit --config configs/autoencoder/embedded.yaml` runs it.

# The tests run in TEST_WORKERS processes (pytest-xdist), a test file to a worker (its module fixtures are built once);
# tests/conftest.py shares the cores among them. Default: one per core, at most 4 (each holds torch and a test's
# models in memory). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

test: $(INSTALLED) ## Run the whole test suite (TEST_WORKERS processes)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(INSTALLED) ## Run the tests not marked slow
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: $(INSTALLED) ## Check the code with ruff
	$(VENV)/bin/ruff check anomaly_diff tests experiments

data: $(INSTALLED) ## Write the embedded data set to DIR (make data DIR=/some/where)
	$(VENV)/bin/anomaly-diff-data --output $(or $(DIR),.cache/embedded)

bench: bench-metrics bench-infer bench-memory bench-train bench-export bench-overlay-writes ## Run every benchmark and write experiments/results/

bench-metrics: $(INSTALLED) ## Time and peak memory of exact and binned metrics at MVTec AD size
	$(PY) experiments/bench_metrics.py

bench-infer: $(INSTALLED) ## Images/s of DeCo-Diff inference: batch 1/16, fp32/bf16/compiled; REFERENCE=<DeCo-Diff checkout> adds the loop vs the reference's
	$(PY) experiments/bench_infer.py $(if $(REFERENCE),--reference $(REFERENCE))

bench-memory: $(INSTALLED) ## Peak RSS of test (exact and binned metrics) and predict on the embedded set at 1x and 10x
	$(PY) experiments/bench_memory.py

bench-train: $(INSTALLED) ## Images/s and peak RSS of DeCo-Diff training steps: batch 4 and 16, fp32 and bf16, cached latents or not
	$(PY) experiments/bench_train.py

bench-export: $(INSTALLED) ## Images/s of DeCo-Diff eager vs exported (exported-program, ONNX Runtime, TorchScript): embedded batch 1/8, UNet S 256 px batch 1
	$(PY) experiments/bench_export.py
	$(PY) experiments/bench_export.py --setting unet_S_256

bench-overlay-writes: $(INSTALLED) ## Seconds to write predict's overlay PNGs with and without an fsync per file
	OMP_NUM_THREADS=1 $(PY) experiments/bench_overlay_writes.py --rounds 5

# Experiments: experiments/README.md lists each script's results, prerequisites and time. They run single-threaded
# (OMP_NUM_THREADS=1) on this 2-core machine; the studies take hours. REFERENCE=<DeCo-Diff checkout> for the parity.
.PHONY: study-drdc study-drdc-timing study-deco-diff-chain study-latent-space study-category-prediction \
	baseline-embedded baseline-make-run parity-reference parity-reference-unet
EXP := OMP_NUM_THREADS=1 $(PY)
DRDC_SEEDS := 0 1 2
LATENT_CANDIDATES := kl features features_proj4

study-drdc: $(INSTALLED) ## DRDC ablation: train seeds 0 1 2, choose on the tuning split, score the test split once (hours)
	for s in $(DRDC_SEEDS); do $(EXP) experiments/drdc_ablation.py train --seed $$s || exit 1; done
	$(EXP) experiments/drdc_ablation.py sample --seed 0 --split tuning --round 1
	$(EXP) experiments/drdc_ablation.py choose
	for s in $(DRDC_SEEDS); do $(EXP) experiments/drdc_ablation.py sample --seed $$s --split tuning --round 2 || exit 1; done
	for s in $(DRDC_SEEDS); do $(EXP) experiments/drdc_ablation.py sample --seed $$s --split test --round 3 || exit 1; done
	$(EXP) experiments/drdc_ablation.py report

study-drdc-timing: $(INSTALLED) ## DRDC inference ms/image, base alone vs base + refinement (needs study-drdc's seed-0 stages)
	$(EXP) experiments/drdc_timing.py

study-deco-diff-chain: $(INSTALLED) ## DeCo-Diff test-time chain chosen on the tuning split (CKPT=, default make run's last.ckpt)
	$(EXP) experiments/deco_diff_chain.py --ckpt $(or $(CKPT),$(RUNS_DIR)/deco_diff/embedded/latest/checkpoints/last.ckpt)

study-latent-space: $(INSTALLED) ## Latent-space candidates, their test-time maps and DeCo-Diff epochs, chosen on the tuning split (hours)
	for c in $(LATENT_CANDIDATES); do $(EXP) experiments/latent_space.py train $$c || exit 1; done
	for c in features features_proj4; do $(EXP) experiments/latent_space.py maps $$c || exit 1; done
	$(EXP) experiments/latent_space.py train features_e60
	$(EXP) experiments/latent_space.py epochs features_e60
	$(EXP) experiments/latent_space.py report

study-category-prediction: $(INSTALLED) ## Category-classifier accuracy and its cost to DeCo-Diff (needs study-latent-space's features_proj4)
	$(EXP) experiments/category_prediction.py

baseline-embedded: $(INSTALLED) ## Simple baselines and a PatchCore-style reference on the embedded data (realistic seeds 0 1, hard seed 0)
	$(EXP) experiments/embedded_baseline.py --seed 0 --difficulty realistic
	$(EXP) experiments/embedded_baseline.py --seed 1 --difficulty realistic
	$(EXP) experiments/embedded_baseline.py --seed 0 --difficulty hard

baseline-make-run: $(INSTALLED) ## The references (feature kNN, colour Gaussian) on make run's own test images and metrics
	$(EXP) experiments/make_run_references.py --data-seed 0
	$(EXP) experiments/make_run_references.py --data-seed 1
	$(EXP) experiments/make_run_references.py --data-seed 0 --difficulty hard

parity-reference: $(INSTALLED) ## Element-by-element parity of DeCo-Diff with the reference code (REFERENCE=<DeCo-Diff checkout>)
	@test -n "$(REFERENCE)" || { echo "make parity-reference: give the reference code: make parity-reference REFERENCE=/path/to/DeCo-Diff" >&2; exit 2; }
	$(EXP) experiments/reference_parity.py --reference $(REFERENCE)

parity-reference-unet: $(INSTALLED) ## Print the UNet parity table against the reference code (REFERENCE=<DeCo-Diff checkout>)
	@test -n "$(REFERENCE)" || { echo "make parity-reference-unet: give the reference code: make parity-reference-unet REFERENCE=/path/to/DeCo-Diff" >&2; exit 2; }
	$(EXP) experiments/reference_unet_parity.py --reference $(REFERENCE)

sweep: $(INSTALLED) ## Create the W&B sweep SWEEP=<file> (configs/sweeps/) and run an agent on it (needs W&B online)
	@test -n "$(SWEEP)" || { echo "make sweep: give a sweep file: make sweep SWEEP=configs/sweeps/deco_diff.yaml" >&2; exit 2; }
	$(PY) -m anomaly_diff.sweep $(SWEEP) $(if $(COUNT),--count $(COUNT))

clean: ## Remove caches and run directories (keeps .venv)
	rm -rf $(RUNS_DIR) .cache .pytest_cache .ruff_cache lightning_logs wandb
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

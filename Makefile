# The README's commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The venv's pip is first brought to PIP_VERSION: the pip that Python 3.11's venv bundles (23.2) spends twice the CPU
# time resolving the ~110 packages (it scores every wheel of every release on the index). --no-compile, then
# compileall on every core: pip byte-compiles the ~16,000 installed files on one core (47 s of an 80 s install here);
# compileall -j 0 does it on all cores, leaving out the packages' own test suites (a fifth of the files, which cxrseg
# never imports; Python compiles anything else on first import). -qq and `|| true` as pip does: a few packages ship
# files that are not Python 3 (templates, test fixtures), which pip's own compile step skips silently.
PIP_VERSION ?= 26.3
PIP := $(PY) -m pip install --quiet --disable-pip-version-check --no-compile
SITE_PACKAGES = $$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))")
COMPILE := $(PY) -m compileall -qq -j 0 -x '/tests?/' $(SITE_PACKAGES) || true
# Extra pip options, e.g. TORCH_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu" for CPU-only wheels.
TORCH_INDEX ?=

.PHONY: install install-dev demo anatomy-demo cv-demo test test-fast quality clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) pip==$(PIP_VERSION)

$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) $(TORCH_INDEX) -r requirements.txt
	$(PIP) --no-deps -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) $(TORCH_INDEX) -r requirements-dev.txt
	$(COMPILE)
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install  ## synthetic data → train → metrics, on CPU in a few minutes
	$(PY) run_train.py --config recipe/demo.yaml
	@$(PY) -c "import json; m = json.load(open('outputs/demo/all_results.json')); \
	print('\n'.join(f'{k:>26} = {v:.4f}' for k, v in sorted(m.items()) if k.startswith('eval_'))); \
	print('Model: outputs/demo  (UperNetForSemanticSegmentation.from_pretrained(\"outputs/demo\"))')"

# The anatomy demo (docs/results.md): a label set of your own (lung fields, heart), trained, then evaluated with the
# prior-mask baseline beside each class's Dice.
anatomy-demo: install  ## synthetic lung fields + heart → train → evaluate (per class, with baselines), on CPU
	$(PY) run_train.py --config recipe/anatomy_demo.yaml
	$(PY) -m cxrseg evaluate --model outputs/anatomy-demo --data data/anatomy-demo --score-size working

# The cross-validation demo (docs/cross-validation.md "The demo, 3 folds"); a quick look: make cv-demo CV_IMAGES=48 ...
# Each fold keeps its last checkpoint (cv_checkpoint: last) and CV_AVERAGE_LAST + 1 checkpoints on disk: the
# checkpoint best on the fold's validation images is never rotated out, so the newest CV_AVERAGE_LAST survive beside
# it for `cxrseg average`. Rerun after an interruption: training resumes, the steps after it are redone.
CV_FOLDS ?= 3
CV_EPOCHS ?= 15
CV_IMAGES ?= 400
CV_TEST_IMAGES ?= 200
CV_AVERAGE_LAST ?= 3
CV_DATA ?= data/demo
CV_TEST_DATA ?= data/demo-test
CV_OUT ?= outputs/demo-cv
CV_AVERAGED ?= $(CV_OUT)-averaged

cv-demo: install  ## K folds → out-of-fold tuning → ensemble vs each fold, last checkpoint vs averaged, on a test split
	$(PY) run_train.py --config recipe/demo.yaml --num_folds $(CV_FOLDS) --num_train_epochs $(CV_EPOCHS) \
		--data_dir $(CV_DATA) --demo_num_images $(CV_IMAGES) --output_dir $(CV_OUT) --resume_from_checkpoint last \
		--save_total_limit $$(($(CV_AVERAGE_LAST) + 1))
	test -d $(CV_TEST_DATA) || $(PY) -m cxrseg make-demo-data --out $(CV_TEST_DATA) --seed 1 \
		--num-images $(CV_TEST_IMAGES) --split test
	$(PY) -m cxrseg average --model $(CV_OUT) --last $(CV_AVERAGE_LAST) --out $(CV_AVERAGED)
	for model in $(CV_OUT) $(CV_AVERAGED); do \
		$(PY) -m cxrseg evaluate --model $$model --data $(CV_DATA) --search-postprocess || exit 1; \
		$(PY) -m cxrseg evaluate --model $$model --data $(CV_TEST_DATA) --split test || exit 1; \
		for k in $$(seq 0 $$(($(CV_FOLDS) - 1))); do \
			$(PY) -m cxrseg evaluate --model $$model/fold_$$k --data $(CV_TEST_DATA) --split test \
				--postprocess $$model/postprocess.json || exit 1; \
		done; \
	done
	@$(PY) scripts/cv_demo_table.py $(CV_OUT) --averaged $(CV_AVERAGED) --split test

# Tests run in parallel (pytest-xdist, one worker per core), a test file per worker at a time (--dist loadfile), so a
# module's shared fixture (a training run, the 2-process DDP run) is built once. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile

test: install-dev  ## the whole suite (slow tests included; the browser test needs Debian's chromium: .ci/run installs it)
	$(PY) -m pytest $(PYTEST_PARALLEL)

test-fast: install-dev  ## the tests not marked slow: for day-to-day work
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

quality: install-dev  ## lint and formatting (ruff), what a pull request must pass
	$(VENV)/bin/ruff check src tests bench scripts run_train.py app.py
	$(VENV)/bin/ruff format --check src tests bench scripts run_train.py app.py

clean:
	rm -rf outputs data/demo data/demo-test data/anatomy-demo .pytest_cache

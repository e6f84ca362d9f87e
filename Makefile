# The README's commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Extra pip options, e.g. TORCH_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu" for CPU-only wheels.
TORCH_INDEX ?=

.PHONY: install install-dev demo test quality clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) $(TORCH_INDEX) -r requirements.txt
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PIP) $(TORCH_INDEX) -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install  ## synthetic data → train → metrics, on CPU in a few minutes
	$(PY) run_train.py --config recipe/demo.yaml
	@$(PY) -c "import json; m = json.load(open('outputs/demo/all_results.json')); \
	print('\n'.join(f'{k:>26} = {v:.4f}' for k, v in sorted(m.items()) if k.startswith('eval_'))); \
	print('Model: outputs/demo  (UperNetForSemanticSegmentation.from_pretrained(\"outputs/demo\"))')"

test: install-dev  ## the whole suite (slow tests included; the browser test needs Debian's chromium: .ci/run installs it)
	$(PY) -m pytest

quality: install-dev
	$(VENV)/bin/ruff check src tests bench run_train.py app.py

clean:
	rm -rf outputs data/demo .pytest_cache

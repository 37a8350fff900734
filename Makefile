# Two commands on a fresh machine: `make demo` and `make test`.
# Everything is installed from uv.lock into .venv; uv itself comes from PyPI if missing.
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv

.PHONY: demo test lint install clean chromium

$(UV):
	python3 -m pip install --quiet --target .tools "uv==$(UV_VERSION)"

# Byte-compiled at install: six services importing pandas, scikit-learn and MLflow for the
# first time would otherwise compile them all at once on their first start.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras --compile-bytecode
	$(VENV)/bin/python -m compileall -q cli coordinator recipes services shared
	touch $@

# Azurite (the Azure Storage emulator) for the blob adapter's tests, from package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

# Headless Chromium and its WebDriver for the dashboard's browser test, from Debian packages;
# only when one is missing (RETRAINER_SKIP_BROWSER_TESTS=1 skips that test and this step).
CHROMIUM_BINS := /usr/bin/chromium /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

chromium:
ifneq ($(RETRAINER_SKIP_BROWSER_TESTS),1)
	@for bin in $(CHROMIUM_BINS); do [ -x "$$bin" ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "no apt-get: install Chromium and chromedriver as $(CHROMIUM_BINS), or set RETRAINER_SKIP_BROWSER_TESTS=1" >&2; exit 1; }; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	fi
endif

# checkov, the IaC scanner the template tests run, in an environment of its own: its pins
# conflict with the project's lock (deploy/azure/checkov-requirements.in says how to update).
CHECKOV_ENV := .tools/checkov

$(CHECKOV_ENV)/.installed: deploy/azure/checkov-requirements.txt $(VENV)/.installed
	rm -rf $(CHECKOV_ENV)
	$(UV) venv --quiet --no-config --python $(VENV)/bin/python $(CHECKOV_ENV)
	$(UV) pip install --quiet --no-config --python $(CHECKOV_ENV)/bin/python --require-hashes \
		-r deploy/azure/checkov-requirements.txt
	touch $@

install: $(VENV)/.installed node_modules/.installed chromium $(CHECKOV_ENV)/.installed

demo: install
	$(VENV)/bin/retrainer demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# In parallel (pytest-xdist): at least 4 workers, since most end-to-end tests wait on processes
# rather than compute; one test module per worker at a time (--dist loadfile), so a module's
# shared stack and module-scoped fixtures stay in one process. The 15 slowest tests are listed.
# A crashed worker ends the run at once: pytest-xdist's loadfile scheduler can hang for ever
# after replacing one (pytest-dev/pytest-xdist#784, #1378).
TEST_WORKERS ?= $(shell python3 -c "import os; print(max(4, os.cpu_count() or 1))")

test: lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0 --durations=15

clean:
	rm -rf .retrainer .tools .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh machine: `make demo` and `make test`.
# Everything is installed from uv.lock into .venv; uv itself comes from PyPI if missing.
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv

.PHONY: demo test lint install clean

$(UV):
	python3 -m pip install --quiet --target .tools "uv==$(UV_VERSION)"

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	touch $@

# Azurite (the Azure Storage emulator) for the blob adapter's tests, from package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

install: $(VENV)/.installed node_modules/.installed

demo: install
	$(VENV)/bin/retrainer demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf .retrainer .tools .pytest_cache .mypy_cache .ruff_cache

# The two commands a newcomer needs: `make demo` and `make test`. Every target creates or
# refreshes .venv first (idempotent: pip runs again only when pyproject.toml or client/pyproject.toml
# changed). The venv also holds the client library (client/, installed editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint bench demo demo-down bundle clean

venv: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,lint]' -e ./client
	@touch $@

test: venv
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check _modules _states _utils bundle discovery client tests benchmarks demo
	$(BIN)/mypy --config-file client/pyproject.toml client/envoy_client
	$(BIN)/yamllint -s .
	$(BIN)/salt-lint $$(find salt pillar -name '*.sls')
	$(BIN)/python -m tests.show_sls

bench: venv
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# A bundle in out/, and pillar/envoy/bundle.sls pointing hosts at it (kitchen.yml serves out/ as
# salt://envoy-bundles/).
BUNDLE_SOURCE_PREFIX ?= salt://envoy-bundles/
bundle: venv
	$(BIN)/envoy-bundle build --out out/ --pillar pillar/envoy/bundle.sls --source-prefix $(BUNDLE_SOURCE_PREFIX)

demo: venv
	$(BIN)/python -m demo up

demo-down: venv
	$(BIN)/python -m demo down

clean: demo-down
	rm -rf out/ .pytest_cache .ruff_cache

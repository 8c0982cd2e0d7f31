# The two commands a newcomer needs: `make demo` and `make test`. Every target creates or
# refreshes .venv first (idempotent: pip runs again only when pyproject.toml or client/pyproject.toml
# changed). The venv also holds the client library (client/, installed editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint bench demo demo-down bundle salt-tree clean

venv: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,lint]' -e ./client
	@touch $@

test: venv
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check _modules _states _runners _utils _pillar bundle discovery client tests benchmarks demo
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

# What a Salt master serves of this repo, and nothing else (no .venv, .git or tests): the formula
# (envoy/) and the custom module dirs Salt syncs (_runners and _pillar to the master, the rest to minions).
# README: "Using the formula in a Salt tree".
SALT_TREE_DIRS := _modules _states _runners _utils _pillar
salt-tree:
	@test -n "$(DEST)" || { echo "usage: make salt-tree DEST=/srv/salt-envoy" >&2; exit 2; }
	mkdir -p $(DEST)
	rm -rf $(DEST)/envoy $(addprefix $(DEST)/,$(SALT_TREE_DIRS))
	tar -C salt --exclude=__pycache__ -cf - envoy | tar -C $(DEST) -xf -
	tar --exclude=__pycache__ -cf - $(SALT_TREE_DIRS) | tar -C $(DEST) -xf -
	@echo "$(DEST): envoy/ $(SALT_TREE_DIRS)"

demo: venv
	$(BIN)/python -m demo up

demo-down: venv
	$(BIN)/python -m demo down

clean: demo-down
	rm -rf out/ .pytest_cache .ruff_cache

# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_CLIENTS := tests/clients/node
NODE_STAMP := $(NODE_CLIENTS)/node_modules/.installed
WEB_STAMP := web/node_modules/.installed

.PHONY: run test lint bench bench-peers image-check clean browser

$(STAMP): requirements-dev.lock pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) requirements-dev.lock --editable
	touch $(STAMP)

# The Node clients tests/clients drives (pinned in their package-lock.json), reinstalled when
# the lock changes: npm ci replaces node_modules, the stamp inside it says it is complete.
$(NODE_STAMP): $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The libraries the playground vendors (web/vendor.mjs copies them; a test checks the copies).
$(WEB_STAMP): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

# Debian's chromium for the browser tests (tests/browser); Playwright downloads no browser.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

run: $(STAMP)
	$(BIN)/palaver serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint $(NODE_STAMP) $(WEB_STAMP) browser
	$(BIN)/pytest -q

# The Docker image's install and start steps, run on this machine (CI runs them).
image-check:
	PYTHON=$(PYTHON) scripts/image-check.sh

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.bench $(BENCH_ARGS)

# LiteLLM's proxy beside palaver in the same run (optional, not in CI): its own venv, pinned.
PEERS := .venv-peers
$(PEERS)/.installed: bench/requirements-peers.lock
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --require-hashes -r bench/requirements-peers.lock
	touch $(PEERS)/.installed

bench-peers: $(STAMP) $(PEERS)/.installed
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.bench --peers $(PEERS)/bin/litellm $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEERS) .mypy_cache .pytest_cache .ruff_cache $(NODE_CLIENTS)/node_modules web/node_modules

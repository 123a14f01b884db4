# `make run` starts the bot; `make test` runs everything CI runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The database servers the tests use (each run creates and drops a database of its own there, docs/tests.md);
# the project's machines run them locally.
# Set one to an empty value to leave that database out.
export POSTGRES_TEST_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test
export MYSQL_TEST_URL ?= mysql+asyncmy://root@127.0.0.1:3306/test

# The image test (tests/test_image.py) builds the Dockerfile with podman, from a base made
# with debootstrap; as root, make installs both from Debian. PODMAN= leaves the image test out.
export PODMAN ?= podman

# tests/test_prometheus.py runs Debian's Prometheus server and promtool (/usr/bin) on the alert rules and the
# dashboard (deploy/monitoring); as root, make installs them. PROMETHEUS= leaves those tests out.
export PROMETHEUS ?= /usr/bin/prometheus

.PHONY: run sandbox replicas test lint unit image-tools monitoring-tools bench bench-scale clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/python main.py

# Chat with the bot in this terminal through the built-in Bot API emulator.
sandbox: $(VENV)/.run-deps
	$(BIN)/python main.py --sandbox

# Three webhook replicas on the database your settings name, behind the emulator; chat with them.
replicas: $(VENV)/.run-deps
	$(BIN)/python -m bot.emulator.replicas

# Every checker runs, even after one failed, so all findings show; the project's own check comes
# first: its hint for a reply not returned is the right one here (ruff's RET503 says "return None").
LINTERS := "$(BIN)/python -m tools.check_replies handlers" "$(BIN)/ruff check ." "$(BIN)/ruff format --check ." \
	"$(BIN)/mypy" "$(BIN)/hadolint Dockerfile"

lint: $(VENV)/.dev-deps
	@status=0; for linter in $(LINTERS); do echo "$$linter"; $$linter || status=1; done; exit $$status

# Two workers, each test file on one of them (a file's bot processes are shared by its tests).
unit: $(VENV)/.dev-deps image-tools monitoring-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

image-tools:
	@if [ -n "$(PODMAN)" ] && ! { command -v $(PODMAN) && command -v debootstrap; } >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq --no-install-recommends podman debootstrap >/dev/null \
			|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman debootstrap >/dev/null; }; \
		else \
			echo "The image test needs podman and debootstrap: sudo apt-get install podman debootstrap, or PODMAN= make test"; \
		fi; \
	fi

monitoring-tools:
	@if [ -n "$(PROMETHEUS)" ] && ! { [ -x "$(PROMETHEUS)" ] && [ -x "$(dir $(PROMETHEUS))promtool" ]; }; then \
		if [ "$$(id -u)" = 0 ]; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
			|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; \
		else \
			echo "The monitoring test needs prometheus and promtool: sudo apt-get install prometheus, or PROMETHEUS= make test"; \
		fi; \
	fi

test: lint unit

# Not part of `make test`: minutes of load, the whole bot on every storage in one run (README, Performance).
# It creates and drops its own tables in the test databases; REDIS_URL adds aiogram's RedisStorage.
bench: $(VENV)/.dev-deps
	REDIS_URL=$${REDIS_URL-redis://127.0.0.1:6379} \
	POSTGRES_BENCH_URL=$${POSTGRES_BENCH_URL-$(POSTGRES_TEST_URL)} MYSQL_BENCH_URL=$${MYSQL_BENCH_URL-$(MYSQL_TEST_URL)} \
	$(BIN)/python -m benchmarks --json benchmark-results.json

# Not part of `make test`: the owner's commands, /forget, expiry and the bot on a million users
# (docs/performance.md). SCALE_N=100000 for fewer; it creates and drops its own PostgreSQL databases.
bench-scale: $(VENV)/.dev-deps
	POSTGRES_BENCH_URL=$${POSTGRES_BENCH_URL-$(POSTGRES_TEST_URL)} \
	$(BIN)/python -m benchmarks.scale --json benchmark-scale.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

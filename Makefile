# The README's commands. Each target creates .venv and installs what it needs on a fresh Debian
# machine with Python 3.11 (Prometheus, Alertmanager, the node exporter, PostgreSQL, and Redis and
# HAProxy for `watchkeeper up --ha`, with apt when running as root;
# the tests find PostgreSQL's binaries under /usr/lib/postgresql/<version>/bin, off the PATH).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exact versions of every dependency, made by `make lock` (uv pip compile): what the tests ran on is
# what installs. .venv is brought to it whenever it or pyproject.toml changes.
LOCK := requirements.lock
LOCK_FLAGS ?= --upgrade

.PHONY: up up-ha down status test lint lock system-packages clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Refresh the lock (LOCK_FLAGS= keeps the current pins and only adds what pyproject.toml gained),
# install it, and run the suite on it before committing it.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 $(LOCK_FLAGS) --quiet \
	  --output-file $(LOCK)
	$(MAKE) test

system-packages:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v prometheus-node-exporter >/dev/null || missing="$$missing prometheus-node-exporter"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing:$$missing (run as root, or: sudo apt-get install$$missing)"; \
	  fi; \
	fi

up: $(STAMP) system-packages
	$(BIN)/watchkeeper up --demo-traffic

# Two of every process on loopback (docs/operations.md, "Two of every process").
up-ha: $(STAMP) system-packages
	$(BIN)/watchkeeper up --ha --demo-traffic

down: $(STAMP)
	$(BIN)/watchkeeper down

status: $(STAMP)
	$(BIN)/watchkeeper status

# Two pytest sessions side by side: the tests marked `stack` (each starts Prefect, Prometheus,
# Alertmanager and the service, and mostly waits on them) and `slow` one after another in one,
# everything else in the other; the stack session's output follows the other's. Each has its own
# PostgreSQL.
STACK_LOG := $(VENV)/pytest-stack.log

test: lint system-packages
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "stack or slow" > $(STACK_LOG) 2>&1 & stack=$$!; \
	$(BIN)/python -m pytest -q -m "not stack and not slow"; rest=$$?; \
	wait $$stack; stacked=$$?; echo "--- stack tests"; cat $(STACK_LOG); \
	test $$rest -eq 0 && test $$stacked -eq 0

# Style, formatting, the layers' import contracts (.importlinter) and dead code (vulture; names only
# frameworks use are in vulture_allowlist.py).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/vulture watchkeeper tasks flows deployments benchmarks vulture_allowlist.py \
	  --exclude watchkeeper/store/migrations --min-confidence 60 \
	  --ignore-decorators "@*.command,@*.callback,@*.get,@*.post,@*.put,@*.exception_handler,@*.middleware,@field_validator,@model_validator,@flow,@task" \
	  --ignore-names "model_config,do_GET,do_POST,log_message,collect"

clean:
	rm -rf $(VENV) .watchkeeper .pytest_cache .ruff_cache

# Veredicto: `make run` (the app, a worker and Redis on this machine), `make demo` (the same after
# one simulated round of the loop) and `make test` (the suite).
# Only Python 3.11 is needed; everything else comes from PyPI into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
SQLITE_TESTS = tests/feedback/test_services.py tests/feedback/test_queue_concurrency.py \
	tests/feedback/test_views.py tests/feedback/test_hostile_input.py tests/feedback/test_auth.py \
	tests/feedback/test_hostile_edges.py tests/feedback/test_queue_priority.py \
	tests/evals/test_live_battles.py tests/feedback/test_task_polish.py

.PHONY: run demo setup test install chromium lint format clean

install: $(STAMP)

# constraints.txt pins the whole tree; torch==2.13.0 there keeps pip on the local CPU wheel.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Veredicto needs Python 3.11 (set PYTHON=...)")'
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# What `make run` and `make demo` both start with: the database, the demo users and project.
setup: install
	@mkdir -p var
	DEBUG=1 $(BIN)/python manage.py migrate --noinput
	@DEBUG=1 $(BIN)/python manage.py seed_demo

# What they both end with: Redis, a Celery worker, Celery beat (the sweep that fails background
# work whose worker died) and the app, until Ctrl-C.
define SERVE
@echo ""
@echo "  Veredicto is starting at http://$(HOST):$(PORT)/  (Ctrl-C stops everything)"
@echo ""
@DEBUG=1 $(BIN)/python config/devservices.py run -- \
	web=$(BIN)/python manage.py runserver --noreload $(HOST):$(PORT) ::: \
	worker=$(BIN)/celery -A config worker -Q default,gpu --concurrency 1 --prefetch-multiplier 1 -l INFO ::: \
	beat=$(BIN)/celery -A config beat -s var/celerybeat-schedule --pidfile= -l INFO
endef

run: setup
	@DEBUG=1 $(BIN)/python manage.py build_tiny_model
	@DEBUG=1 $(BIN)/python manage.py register_model var/models/tiny --name tiny-base --if-missing --no-send
	$(SERVE)

# Two simulated rounds of the whole loop on the toy tasks (loop/demo/: SFT, reward model, DPO
# with an SFT term, GRPO on the toy checker, PPO only if the reward model earns it, round two's
# DPO; each stage against its parent, paired; jobs run in this process; it ends with a per-stage
# wall/CPU time table), then the app on it.
demo: setup
	DEBUG=1 $(BIN)/python manage.py demo_loop --scale demo
	$(SERVE)

# Browser tests drive Debian's Chromium; as root with apt we install it, never a downloaded build.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "The browser tests need Chromium: install your distribution's chromium package."; exit 1; fi; }

RAY_TESTS = tests/jobs/test_ray_backend.py

test: install chromium
	# One torch thread: the suite runs workers and servers beside the tests on 2 cores, and
	# OpenMP threads that fight over the cores are many times slower than one that does not.
ifeq ($(strip $(PYTEST_ARGS)),)
	OMP_NUM_THREADS=1 $(BIN)/python config/devservices.py test -- $(BIN)/python -m pytest \
		--ignore=$(RAY_TESTS)
	# The Ray backend against a local Ray head of its own, in a pytest process of its own: in
	# one process with the whole suite its job sends were lost (not yet understood; see the
	# closing note of the fourth session).
	OMP_NUM_THREADS=1 $(BIN)/python config/devservices.py test -- $(BIN)/python -m pytest -q \
		$(RAY_TESTS)
	# `make run`'s default database is SQLite: the queue, its SQL and the annotation screens again
	# on it (IMMEDIATE transactions instead of row locks).
	$(BIN)/python config/devservices.py test -- env -u TEST_DATABASE_URL -u DATABASE_URL $(BIN)/python -m pytest -q \
		$(SQLITE_TESTS)
else
	OMP_NUM_THREADS=1 $(BIN)/python config/devservices.py test -- $(BIN)/python -m pytest $(PYTEST_ARGS)
endif

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var/tmp .pytest_cache

# The two commands of the README: `make demo` and `make test`.
# Both create .venv on first use; `make test` also installs redis-server, PostgreSQL
# and RabbitMQ with apt when they are missing and we are root (CI, fresh machines).
# `make compat` runs the version matrix (Celery 5.4 to 5.7), each in its own venv.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test suite test-slow lint typecheck unit integration celery-suite celery-integration plain-install compat \
        plain-install-build plain-install-check \
        compat-one compat-outbox bench bench-web system-deps clean example-tests docs chaos metrics statsd-daemon web screenshots

$(PY):
	$(PYTHON) -m venv $(VENV) || { \
	  [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
	  || missing="$$missing postgresql"; \
	[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	[ -x /usr/bin/carbon-cache ] || missing="$$missing graphite-carbon"; \
	[ -f /usr/lib/python3/dist-packages/graphite/settings.py ] || missing="$$missing graphite-web"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing:$$missing — install them (sudo apt-get install$$missing) or run as root"; \
	    exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The reference StatsD daemon (npm), for the metrics pipeline tests.
STATSD_DAEMON := .cache/statsd-daemon/node_modules/statsd/stats.js
$(STATSD_DAEMON):
	npm install --no-audit --no-fund --silent --prefix .cache/statsd-daemon statsd@0.9.0

statsd-daemon: $(STATSD_DAEMON)

# The suite mostly waits on workers and servers (a run of it keeps two cores less than
# half busy): three processes, a file each at a time (a module's worker and servers
# stay in one process), the slowest files first (tests/conftest.py; xdist's own
# reorder, by number of tests, would leave the one-test chaos runs for the end).
# A few slow tests that prove the same behaviour on each store (a crash waited out to
# a lease's end, a 22-s beat outage) run on one store here (--store-variants=kept;
# their marker one_store_in_make_test names it) and on the others in `make test-slow`.
# The no-extras venv is built while the suite runs; then the four other checks side by
# side (none of them times anything; Celery's suite and the no-extras worker keep the
# two cores busy together): about a minute instead of two.
PYTEST_XDIST := -n 3 --dist loadfile --no-loadscope-reorder
test: system-deps $(STAMP) $(STATSD_DAEMON) lint typecheck
	$(MAKE) --no-print-directory -j2 suite plain-install-build
	$(MAKE) --no-print-directory -j4 --output-sync=target \
	  example-tests docs celery-suite plain-install-check

# The suite alone (the no-extras venv is built beside it: pip mostly waits too).
suite: system-deps $(STAMP) $(STATSD_DAEMON)
	$(PY) -m pytest $(PYTEST_XDIST) --durations=15 --store-variants=kept

# The Django example's own suite (pytest-django and our plugin), as its team runs it,
# on a database of its own under .cache/; strict rule coverage: every rule its tasks
# declare is exercised by a test (docs/testing.md).
EXAMPLE_DATA := $(CURDIR)/.cache/example-tests
example-tests: $(STAMP)
	@rm -rf $(EXAMPLE_DATA)
	cd examples/django_app && SHOP_DATA_DIR=$(EXAMPLE_DATA) $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider \
	  --reliable-rules=strict

# The docs site: every page built, links and anchors checked (strict).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d .cache/site

# Celery's own tests (t/unit/tasks, test_builtins), plain and with ReliableTask as
# every app's task class: fails on any test that passes plain only.
celery-suite: $(STAMP)
	$(PY) -m tests.compat.celery_suite

# Celery's own integration suite (t/integration: tasks, canvas, inspect, the Redis
# backend) plain and with ReliableTask as every app's task class, against a Redis of
# its own and Celery's prefork session worker; reruns what differs and fails on a test
# that passes plain only. About 40 minutes on 2 cores: not part of `make test`.
celery-integration: system-deps $(STAMP)
	$(PY) -m pip install -q 'pydantic>=2'
	$(PY) -m tests.compat.celery_integration --json .cache/celery-integration/figures.json

# `pip install celery-reliable` with no extras, as a wheel in a venv of its own: a real
# worker reaches every outcome; a configured feature without its library stops it.
PLAIN_VENV := .venv-plain
PLAIN_RUN  := .cache/plain-run
# The wheel is built from a copy of the project's files (tracked, and new ones git does
# not ignore): a build here would rewrite celery_reliable.egg-info in this folder, which
# every process with it on sys.path (the suite's workers) reads its entry points from.
PLAIN_SRC  := .cache/plain-src
$(PLAIN_VENV)/.installed: pyproject.toml
	[ -x $(PLAIN_VENV)/bin/python ] || $(PYTHON) -m venv $(PLAIN_VENV)
	$(PLAIN_VENV)/bin/python -m pip install -q --upgrade pip
	touch $@

# (Two steps: `make test` builds while the suite runs, and checks beside the other checks.)
plain-install:
	$(MAKE) --no-print-directory plain-install-build
	$(MAKE) --no-print-directory plain-install-check

plain-install-build: $(PLAIN_VENV)/.installed
	@rm -rf $(PLAIN_SRC) && mkdir -p $(PLAIN_SRC)
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --files-from=- --ignore-failed-read -c | tar -x -C $(PLAIN_SRC)
	$(PLAIN_VENV)/bin/python -m pip install -q ./$(PLAIN_SRC)  # a local folder: always reinstalled

plain-install-check:
	@rm -rf $(PLAIN_RUN) && mkdir -p $(PLAIN_RUN) && ln -s $(CURDIR)/tests $(PLAIN_RUN)/tests
	cd $(PLAIN_RUN) && $(CURDIR)/$(PLAIN_VENV)/bin/python -m tests.compat.plain_install

# The version matrix: for each supported Celery minor (with the kombu of the same
# minor), a venv of its own runs the whole suite and the Celery-suite comparison.
CELERY_MINORS ?= 5.4 5.5 5.6 5.7
COMPAT_FIGURES := .cache/compat
compat: system-deps $(STAMP) $(STATSD_DAEMON)
	@rm -rf $(COMPAT_FIGURES); status=0; \
	for minor in $(CELERY_MINORS); do \
	  $(MAKE) --no-print-directory compat-one MINOR=$$minor || status=1; \
	done; \
	$(PY) -m tests.compat.summary $(CELERY_MINORS) || status=1; \
	exit $$status

compat-one: $(STAMP) $(STATSD_DAEMON)
	@echo "== Celery $(MINOR).x"
	@[ -x .venv-celery$(MINOR)/bin/python ] || $(PYTHON) -m venv .venv-celery$(MINOR)
	.venv-celery$(MINOR)/bin/python -m pip install -q --upgrade pip
	.venv-celery$(MINOR)/bin/python -m pip install -q -e '.[test]' \
	  'celery==$(MINOR).*' 'kombu==$(MINOR).*'
	@status=0; \
	.venv-celery$(MINOR)/bin/python -m pytest -q -p no:cacheprovider \
	  --junitxml=$(COMPAT_FIGURES)/$(MINOR)-suite.xml || status=1; \
	.venv-celery$(MINOR)/bin/python -m tests.compat.celery_suite \
	  --json $(COMPAT_FIGURES)/$(MINOR)-celery.json || status=1; \
	exit $$status

# The store variants `make test` leaves out (see above): about 2 minutes.
test-slow: system-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_XDIST) --store-variants=others

# The outbox's hook into Celery and kombu (it captures what send_task_message hands
# kombu's Producer._publish, and publishes it later as it was built) on each Celery
# minor: the outbox's tests alone, in the venvs `compat-one` makes (a few minutes per
# minor; `make compat` runs them too, within the whole suite).
OUTBOX_TESTS := tests/integration/test_outbox.py tests/integration/test_outbox_processes.py \
  tests/integration/test_outbox_django.py tests/integration/test_outbox_docs.py
compat-outbox: system-deps $(STAMP)
	@status=0; for minor in $(CELERY_MINORS); do \
	  echo "== Celery $$minor.x: the outbox"; \
	  [ -x .venv-celery$$minor/bin/python ] || $(PYTHON) -m venv .venv-celery$$minor; \
	  .venv-celery$$minor/bin/python -m pip install -q -e '.[test]' \
	    "celery==$$minor.*" "kombu==$$minor.*" || status=1; \
	  .venv-celery$$minor/bin/python -m pytest -q -p no:cacheprovider $(OUTBOX_TESTS) \
	    --junitxml=$(COMPAT_FIGURES)/$$minor-outbox.xml || status=1; \
	done; exit $$status

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: system-deps $(STAMP)
	$(PY) -m pytest tests/integration

# The example shop under a real worker (examples/django_app/demo.py): embedded
# defaults, or the servers DATABASE_URL and REDIS_URL name.
demo: $(STAMP)
	cd examples/django_app && $(CURDIR)/$(PY) demo.py

# docs/web.md's screenshots, of the demo shop's web view in headless Chromium: the demo
# runs first in a directory of its own (/srv/shop, else /tmp/shop; SCREENSHOTS_ROOT),
# so that no traceback in them names this checkout.
screenshots: system-deps $(STAMP)
	$(PY) -m tests.web_docs_screenshots

# The web view on the demo's shop (run `make demo` first): http://127.0.0.1:5580/
web: $(STAMP)
	cd examples/django_app && SHOP_DATA_DIR=$(CURDIR)/examples/django_app/data/demo \
	  $(CURDIR)/$(VENV)/bin/celery -A shop reliable web

# Benchmarks print figures; they are not tests. They start their own Redis and
# PostgreSQL servers. benchmarks.throughput: a real prefork worker, ReliableTask
# variants against plain Celery; benchmarks.limits: a slot's take and give back in µs;
# benchmarks.outbox: publish_in + commit against apply_async, and the relay's latency
# from commit to publish, on SQLite and PostgreSQL (docs/performance.md);
# benchmarks.batches: a 10,000-member batch against the same tasks without one
# (publish time, the members' throughput, the callback's counts and delay).
bench: system-deps $(STAMP)
	$(PY) -m benchmarks.receipts
	$(PY) -m benchmarks.history
	$(PY) -m benchmarks.heartbeat
	$(PY) -m benchmarks.limits
	$(PY) -m benchmarks.outbox
	$(PY) -m benchmarks.batches
	$(PY) -m benchmarks.throughput

# The web view's pages over HTTP with a large store (100,000 dead letters, 1,000,000
# receipts) on SQLite and PostgreSQL: median and p95 ms per page, as a Markdown table
# (about 2 minutes; figures in .cache/bench-web-pages.json).
bench-web: system-deps $(STAMP)
	$(PY) -m benchmarks.web_pages

# The dashboards and alerts against real servers: StatsD daemon -> carbon ->
# graphite-web's render API, promtool's rule tests, and the mapping's unit tests.
# About 20 s, so `make test` runs all of it too; this target is for dashboard work.
metrics: system-deps $(STAMP) $(STATSD_DAEMON)
	$(PY) -m pytest -q tests/integration/test_metrics_pipeline.py \
	  tests/integration/test_prometheus_rules.py tests/unit/test_dashboards.py

# The chaos suite: 2,000 jobs with effects in PostgreSQL on two prefork workers that
# are SIGKILLed and restarted every few seconds, Redis restarted and PostgreSQL crashed
# once; with atomic() (exactly once), without (at least once), with atomic() under
# concurrency(3), what runs at once counted outside the product, and the jobs written
# with publish_in by publisher processes, publishers and relays SIGKILLed too (outbox),
# and the jobs published in batches by publishers SIGKILLed inside their blocks
# (batches: every sealed batch completes once, its callback once, its counts exact).
# Prints its figures.
chaos: system-deps $(STAMP)
	$(PY) -m tests.chaos.run --jobs 2000 --mode all

clean:
	rm -rf $(VENV) .venv-plain .venv-celery* .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis examples/django_app/data

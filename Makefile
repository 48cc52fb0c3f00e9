# The two commands: `make demo` runs the whole loop on the embedded default; `make test` runs the tests
# (and builds the docs site with strict warnings).
# Both create the virtual environment on first use (pinned in requirements.lock).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast lint format lock clean bench chromium postgresql docs

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from its CPU wheel, so nothing pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/rlhf demo

# The rater page's browser test drives Debian's Chromium: installed here when missing and we are root (as in CI);
# elsewhere that test is skipped with the command to install it.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else \
	    echo "chromium/chromedriver missing: the browser test will be skipped (sudo apt-get install -y chromium chromium-driver)"; \
	  fi; \
	fi

# The served-output store's tests also run against a real PostgreSQL server started from Debian's `postgresql`
# binaries: installed here when missing and we are root; elsewhere those tests are skipped with the command.
postgresql:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
	      || echo "could not install postgresql: the store's Postgres tests will be skipped"; \
	  else \
	    echo "postgresql missing: the store's Postgres tests will be skipped (sudo apt-get install -y postgresql)"; \
	  fi; \
	fi

# Unit + integration + e2e (the e2e tests load the real default model; a few minutes on 2 CPU cores),
# then the docs site with strict warnings (a broken link or a warning fails the build).
test: install chromium postgresql
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests
	$(MAKE) --no-print-directory docs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -m "not slow"

# The docs site (MkDocs + Material) from docs/ into site/; some pages are generated from the code at build time.
docs: install
	NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 $(VENV)/bin/mkdocs build --strict

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

lock: install
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site

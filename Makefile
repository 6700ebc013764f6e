# The two front-door commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test install bench data package clean

run: install ## set up and run the whole stack on the embedded SQLite store (Ctrl-C stops it)
	$(PY) -m local.run_local

demo: install ## like run, but sources A and C come from the local emulator (offline)
	$(PY) -m local.run_local --emulator

test: install ## the whole test suite
	$(PY) -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

bench: install ## the ingest benchmark (1M rows; prints ratios measured in one run)
	$(PY) bench/ingest_csv.py --rows 1000000

data: install ## regenerate the shipped Historical_Data.csv
	$(PY) -m local.generate_csv --out data/Historical_Data.csv

package: ## build/<function>/: main.py + requirements.txt + common/, one deployable directory per function
	rm -rf build
	for f in functions/*/; do name=$$(basename $$f); mkdir -p build/$$name; \
	  cp $$f/main.py $$f/requirements.txt build/$$name/; cp -r common build/$$name/; \
	  find build/$$name -name __pycache__ -prune -exec rm -rf {} +; done

clean:
	rm -rf $(VENV) data/etl.sqlite3* .run build

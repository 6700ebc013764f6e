# The two front-door commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test install bench data package deploy clean local-up local-down logs

# The compose stack: the `docker compose` plugin when it answers, else Debian's `docker-compose` (1.29).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# OFFLINE=1: the `offline` profile adds the source emulator, and sources A and C are pointed at it.
OFFLINE_ENV := SOURCE_A_URL=http://emulator:8900/v1/tickers SOURCE_C_URL=http://emulator:8900/api/v3/coins/markets \
	SOURCE_A_RATE=10/10s SOURCE_C_RATE=6/10s

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

deploy: package ## Cloud Functions gen2 + Cloud Scheduler (deploy/gcloud.py): prints the gcloud commands; DEPLOY=1 runs them
	$(PY) -m deploy.gcloud $(if $(DEPLOY),--run)

local-up: ## the stack in containers: MongoDB, each function, the trigger, Prometheus (OFFLINE=1: A and C emulated)
	$(if $(OFFLINE),$(OFFLINE_ENV) $(COMPOSE) --profile offline,$(COMPOSE)) up -d --build

local-down: ## stop and remove the stack's containers (the data volumes stay)
	$(COMPOSE) --profile offline down

logs: ## follow every container's logs
	$(COMPOSE) --profile offline logs -f --tail=100

clean:
	rm -rf $(VENV) data/etl.sqlite3* .run build

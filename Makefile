# make test: create .venv when missing, fetch MNIST when missing, run the tests. make run: the study via `mlflow run`.
# make ui / make prefect: the MLflow UI on the project's store / a Prefect server with its UI (UI_PORT=5000 and
# PREFECT_PORT=4200 choose their ports; give make run the same UI_PORT so its last line links the right one).
PY ?= python3
UI_PORT ?= 5000
PREFECT_PORT ?= 4200
VENV := .venv
STORE := sqlite:///$(CURDIR)/mlruns/mlflow.db
export PAIRS_DATA_DIR ?= $(CURDIR)/data
export MLFLOW_DISABLE_TELEMETRY = true
export DO_NOT_TRACK = 1

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e .
	touch $@

venv: $(VENV)/.installed

test: venv
	$(VENV)/bin/python -m pytest -q

# PROFILE=quick, STUDY=extended, REGISTER=yes|no, ARGS="-P trials=2 -P epoch_grid=2" pass through to mlflow run
run: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE)} \
	  PAIRS_MLFLOW_UI=http://127.0.0.1:$(UI_PORT) \
	  mlflow run . --env-manager local --experiment-name pairs $(if $(PROFILE),-P profile=$(PROFILE)) \
	  $(if $(STUDY),-P study=$(STUDY)) $(if $(REGISTER),-P register_model=$(REGISTER)) $(ARGS)

ui: venv
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-$(STORE)} --host 127.0.0.1 --port $(UI_PORT)

prefect: venv
	PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	  $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

bench: venv
	$(VENV)/bin/python benchmarks/bench.py

# On a machine with a GPU: the oracle tests of every option on CUDA, the GPU benchmark, then the faithful full
# profile and the extended study, each timed as a whole pipeline call (issue 19's targets on one H200: 30 s, 2 min).
gpu-check: venv
	PAIRS_TEST_DEVICE=cuda $(VENV)/bin/python -m pytest -q tests/test_options.py tests/test_train.py -k "stacked or bf16"
	$(VENV)/bin/python benchmarks/bench.py --device cuda --out BENCHMARKS-cuda.md
	$(VENV)/bin/python -c "import time, subprocess, sys; t = time.time(); subprocess.run(sys.argv[1:], check=True); \
	  print(f'faithful full profile on cuda: {time.time() - t:.0f} s')" $(VENV)/bin/python -m flows --device cuda \
	  --experiment gpu-check --register-model no
	$(VENV)/bin/python -c "import time, subprocess, sys; t = time.time(); subprocess.run(sys.argv[1:], check=True); \
	  print(f'extended study on cuda: {time.time() - t:.0f} s')" $(VENV)/bin/python -m flows --study extended \
	  --device cuda --experiment gpu-check --register-model no

# One tracking server for many pipelines (README, "More machines"). `make postgres`: a PostgreSQL cluster in PG_DATA,
# initialised once, started on 127.0.0.1:PG_PORT, with a database `mlflow` (initdb refuses root: as root it runs as
# the user `postgres`, so PG_DATA's parent folders must be readable by it). `make tracking-server`: `mlflow server` on
# it at 127.0.0.1:PORT, artifacts under ARTIFACTS (mlruns/server-artifacts). A team's shared database instead of the
# local one: make tracking-server PG_URI=postgresql://USER:PASSWORD@HOST:5432/DB ARTIFACTS=<shared folder or s3://...>.
# `make postgres-stop` stops the local cluster.
PG_BIN ?= $(or $(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin))),$(patsubst %/,%,$(dir $(shell command -v initdb))))
PG_DATA ?= $(CURDIR)/mlruns/postgres
PG_PORT ?= 5433
PG_URI ?= postgresql://mlflow@127.0.0.1:$(PG_PORT)/mlflow
PORT ?= 5000
ARTIFACTS ?= $(CURDIR)/mlruns/server-artifacts
AS_PG = $(if $(filter 0,$(shell id -u)),runuser -u postgres --)
PSQL = $(AS_PG) $(PG_BIN)/psql -h 127.0.0.1 -p $(PG_PORT) -U mlflow

postgres:
	@test -x "$(PG_BIN)/initdb" || { echo "error: no PostgreSQL (initdb): apt-get install postgresql, or set PG_BIN to the folder that holds initdb and pg_ctl" >&2; exit 1; }
	@test -f "$(PG_DATA)/PG_VERSION" || { mkdir -p "$(PG_DATA)" && $(if $(AS_PG),chown postgres "$(PG_DATA)" &&) \
	  $(AS_PG) $(PG_BIN)/initdb -D "$(PG_DATA)" -U mlflow -A trust -E UTF8 --no-sync >"$(PG_DATA).initdb.log" 2>&1 || \
	  { cat "$(PG_DATA).initdb.log" >&2; exit 1; }; }
	@$(AS_PG) $(PG_BIN)/pg_ctl status -D "$(PG_DATA)" >/dev/null || $(AS_PG) $(PG_BIN)/pg_ctl start -w -D "$(PG_DATA)" \
	  -l "$(PG_DATA)/server.log" -o "-h 127.0.0.1 -p $(PG_PORT) -k ''"
	@$(PSQL) -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1 || \
	  $(PSQL) -d postgres -qc "CREATE DATABASE mlflow"
	@echo "PostgreSQL on 127.0.0.1:$(PG_PORT): $(PG_URI)"

postgres-stop:
	$(AS_PG) $(PG_BIN)/pg_ctl stop -D "$(PG_DATA)" -m fast

tracking-server: venv $(if $(findstring @127.0.0.1:$(PG_PORT)/,$(PG_URI)),postgres)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri $(PG_URI) \
	  --artifacts-destination $(ARTIFACTS) --host 127.0.0.1 --port $(PORT) --workers 2

.PHONY: venv test run ui prefect bench gpu-check postgres postgres-stop tracking-server

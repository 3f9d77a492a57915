# make test: create .venv when missing, fetch MNIST when missing, run the tests. make run: the study via `mlflow run`.
# make ui / make prefect: the MLflow UI on the project's store / a Prefect server with its UI.
PY ?= python3
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

# PROFILE=quick, STUDY=extended, REGISTER=yes|no|auto, ARGS="-P trials=2 -P epoch_grid=2" pass through to mlflow run
run: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE)} \
	  mlflow run . --env-manager local --experiment-name pairs $(if $(PROFILE),-P profile=$(PROFILE)) \
	  $(if $(STUDY),-P study=$(STUDY)) $(if $(REGISTER),-P register_model=$(REGISTER)) $(ARGS)

ui: venv
	$(VENV)/bin/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-$(STORE)} --host 127.0.0.1 --port 5000

prefect: venv
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

bench: venv
	$(VENV)/bin/python -m flows bench

.PHONY: venv test run ui prefect bench

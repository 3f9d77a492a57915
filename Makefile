# make test: create .venv when missing, run the tests. make run: the full pipeline via `mlflow run`.
PY ?= python3
VENV := .venv
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

run: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db} \
	  mlflow run . --env-manager local --experiment-name pairs $(if $(PROFILE),-P profile=$(PROFILE))

bench: venv
	$(VENV)/bin/python -m flows bench

.PHONY: venv test run bench

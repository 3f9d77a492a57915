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

# On a machine with a GPU: the oracle tests of every option on CUDA, the GPU benchmark, then the faithful full
# profile and the extended study, each timed as a whole pipeline call (issue 19's targets on one H200: 30 s, 2 min).
gpu-check: venv
	PAIRS_TEST_DEVICE=cuda $(VENV)/bin/python -m pytest -q tests/test_options.py tests/test_train.py -k "stacked or bf16"
	$(VENV)/bin/python -m flows bench --device cuda --out BENCHMARKS-cuda.md
	$(VENV)/bin/python -c "import time, subprocess, sys; t = time.time(); subprocess.run(sys.argv[1:], check=True); \
	  print(f'faithful full profile on cuda: {time.time() - t:.0f} s')" $(VENV)/bin/python -m flows --device cuda \
	  --experiment gpu-check --register-model no
	$(VENV)/bin/python -c "import time, subprocess, sys; t = time.time(); subprocess.run(sys.argv[1:], check=True); \
	  print(f'extended study on cuda: {time.time() - t:.0f} s')" $(VENV)/bin/python -m flows --study extended \
	  --device cuda --experiment gpu-check --register-model no

.PHONY: venv test run ui prefect bench gpu-check

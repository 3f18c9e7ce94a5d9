# Operator entry point. `make up` brings the platform up (installing what it needs) and runs
# the flow; `make test` runs the whole suite on its own ports beside a running stack.
PY ?= python3
VENV := .state/venv/bin
SERVICE ?= airflow-scheduler
PROFILE ?= local
# stackctl runs on the venv's python once it exists (status reads Kafka through its client)
CTL = $(shell test -x $(VENV)/python && echo $(VENV)/python || echo $(PY)) -m stackctl --profile $(PROFILE)

.PHONY: up down status logs test test-unit test-cluster bench lint reset stream-stop notebook

up:
	$(PY) -m stackctl --profile $(PROFILE) up

down:
	$(CTL) down

status:
	$(CTL) status

logs:
	$(CTL) logs $(SERVICE) -n 200

# The pure tier first (a minute, before any service is installed), then everything else.
test: test-unit
	$(PY) -m stackctl --profile test install --with-test-packages
	$(VENV)/python -m pytest -m "not pure" tests/unit tests/integration tests/e2e tests/cluster $(PYTEST_ARGS)

# The pure tier: no services, no JVM, no jars; Python and the venv's packages only.
test-unit:
	$(PY) -m stackctl --profile test install --python-only
	$(VENV)/python -m pytest -m pure tests/unit $(PYTEST_ARGS)

test-cluster:
	$(PY) -m stackctl --profile test-cluster install --with-test-packages
	$(VENV)/python -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

bench:
	$(PY) -m stackctl --profile test install
	$(VENV)/python -m benchmarks.run_all

lint:
	$(PY) -m stackctl --profile test install --python-only
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

stream-stop:
	$(CTL) stream-stop

# Jupyter against the running stack: the connections come from the profile's environment
# (passwords from its 0600 secrets file), never typed into a notebook. Open
# notebooks/registrations.ipynb. PROFILE=test-cluster for the cluster profile.
notebook:
	@eval "$$($(CTL) env)" && exec $(VENV)/jupyter-lab --notebook-dir=notebooks \
		--ServerApp.ip=127.0.0.1 --no-browser $$([ "$$(id -u)" = 0 ] && echo --allow-root)

reset: down
	rm -rf .state/$(PROFILE)

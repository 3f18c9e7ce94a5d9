# Operator entry point. `make up` brings the platform up (installing what it needs) and runs
# the flow; `make test` runs the whole suite on its own ports beside a running stack.
PY ?= python3
VENV := .state/venv/bin
SERVICE ?= airflow-scheduler

.PHONY: up down status logs test bench lint reset stream-stop

up:
	$(PY) -m stackctl up

down:
	$(PY) -m stackctl down

status:
	$(PY) -m stackctl status

logs:
	$(PY) -m stackctl logs $(SERVICE) -n 200

test:
	$(PY) -m stackctl --profile test install --with-test-packages
	$(VENV)/python -m pytest tests/unit tests/integration tests/e2e $(PYTEST_ARGS)

bench:
	$(PY) -m stackctl --profile test install
	$(VENV)/python -m benchmarks.run_all

lint:
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

stream-stop:
	$(PY) -m stackctl stream-stop

reset: down
	rm -rf .state/local

# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FINPULSE := $(VENV)/bin/finpulse

.PHONY: bootstrap demo test unit up down clean

bootstrap:
	@./scripts/bootstrap.sh

demo: bootstrap
	@$(FINPULSE) demo $(DEMO_ARGS)

test: bootstrap
	@./scripts/test.sh $(PYTEST_ARGS)

unit: bootstrap
	@$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

up: bootstrap
	@$(FINPULSE) up

down:
	@$(FINPULSE) down

clean: down
	rm -rf .local/kafka/data .local/redis .local/run

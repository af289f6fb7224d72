#!/usr/bin/env bash
# The README's test command after bootstrap: lint, format and type checks (configured in
# pyproject.toml, the same as .pre-commit-config.yaml), then unit tests (the import contracts
# among them), then integration tests against the real Kafka and Redis (which the test session
# starts and stops itself).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest tests "$@"

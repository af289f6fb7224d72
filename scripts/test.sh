#!/usr/bin/env bash
# The README's test command after bootstrap: unit tests, then integration tests against the real
# Kafka and Redis (which the test session starts and stops itself).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest tests "$@"

#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml (run after changing a dependency; commit the result).
# uv keeps every version already in a lock file unless pyproject.toml rules it out, so a re-lock
# changes only what it must; `scripts/lock.sh --upgrade` moves everything to the newest allowed.
# Resolved for CPython 3.11 on x86_64 Linux, the platform bootstrap and the worker image run on.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
common=(--quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes "$@")
# The worker image: the base dependencies only (ONNX Runtime, no torch).
"$UV" pip compile pyproject.toml "${common[@]}" -o requirements/worker.lock
# Development (what scripts/bootstrap.sh installs): every extra but gpu.
"$UV" pip compile pyproject.toml "${common[@]}" --extra dev -o requirements/dev.lock

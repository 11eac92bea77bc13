#!/usr/bin/env bash
# Create .venv (if missing) and install ftadvisor with pinned dependencies.
#   scripts/setup.sh          core only (estimate, recommend, profiles, tui)
#   scripts/setup.sh train    core + training stack (launch, calibrate)
#   scripts/setup.sh dev      core + training stack + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
level="${1:-core}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.ftadvisor-$level-$(cat requirements/*.txt pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -r "requirements/$level.txt"
  .venv/bin/python -m pip install -q --no-deps -e .
  if [ "$level" != core ]; then
    # deepspeed ships an sdist whose setup.py imports torch: install it after torch, ops JIT-built on use
    DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation deepspeed==0.19.8
  fi
  touch "$stamp"
fi

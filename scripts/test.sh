#!/usr/bin/env bash
# Set up .venv with the pinned training stack and run the whole test suite.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh" dev
cd "$here"
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# The README's test command: set up a fresh machine (apt + .venv) and run pytest with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh train,serve-cpu,dev,ray
exec .venv/bin/python -m pytest "$@"

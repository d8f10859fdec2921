#!/usr/bin/env bash
# The README's first command: from a fresh clone, a running service answering with the default ensemble.
# Installs what it needs (apt + .venv), builds the default ensemble into models/ the first time
# (see scripts/build_default_ensemble.sh; reused afterwards), then serves it on http://$HOST:$PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}

./scripts/setup.sh train,serve-cpu
[ -f models/ensemble.json ] || ./scripts/build_default_ensemble.sh models

cat <<EOT

Serving the default ensemble on http://$HOST:$PORT (API docs: http://$HOST:$PORT/docs). Try:
  curl -s -F file=@samples/1_pullover.jpg http://$HOST:$PORT/v1/predict

EOT
exec .venv/bin/productrec serve --repository models --host "$HOST" --port "$PORT"

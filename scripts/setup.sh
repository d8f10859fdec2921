#!/usr/bin/env bash
# Shared set-up of the README's commands: Fashion-MNIST from apt (when missing) and a
# virtual environment in .venv with the extras given, e.g. `scripts/setup.sh train,serve-cpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:?usage: scripts/setup.sh EXTRA[,EXTRA...]}

if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Fashion-MNIST (apt package dataset-fashion-mnist)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
echo "installing productrec[$EXTRAS] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"

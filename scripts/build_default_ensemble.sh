#!/usr/bin/env bash
# Build the default ensemble into a model repository (default: models/) with the project's own pipeline:
# three narrow members of three timm families (ResNet, SE-ResNet, ResNeSt), trained with BSCE on the
# Fashion-MNIST-LT benchmark (ρ = 100, 40% symmetric label noise), evaluated on the official test set,
# exported to ONNX and combined by top-1 voting. Resumable: finished steps are skipped.
# Each manifest records the exact training command and the test metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
REPOSITORY=${1:-models}
RUNS=${RUNS:-runs/default}
EPOCHS=${EPOCHS:-4}
# Extra `productrec train` options, e.g. CI's tiny ensemble: TRAIN_ARGS="--max-per-class 60 --test-per-class 10"
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
PRODUCTREC=.venv/bin/productrec
NARROW='channels=(32,64,128,256)'

build_member() {
    local model=$1 run="$RUNS/$1"
    if [ -d "$REPOSITORY/$model" ]; then
        echo "== $model: already in $REPOSITORY, kept"
        return
    fi
    echo "== $model: train"
    local resume=()
    [ -f "$run/last.pt" ] && resume=(--resume)  # continues an interrupted run; a finished one returns at once
    "$PRODUCTREC" train --model "$model" --model-kwargs "$NARROW" --loss bsce \
        --imbalance-ratio 100 --noise-rate 0.4 --noise-type symmetric \
        --epochs "$EPOCHS" --lr 0.05 --patience 1 --batch-size 128 --workers 1 \
        --output "$run" "${TRAIN_ARGS[@]}" "${resume[@]}"
    echo "== $model: evaluate on the official test set"
    "$PRODUCTREC" evaluate "$run" --batch-size 256
    echo "== $model: export"
    "$PRODUCTREC" export "$run" --repository "$REPOSITORY" --name "$model" --version 1 --ensemble-member
}

start=$(date +%s)
for model in resnet10t seresnet18 resnest14d; do
    build_member "$model"
done
echo "== default ensemble in $REPOSITORY ($(( $(date +%s) - start )) s)"

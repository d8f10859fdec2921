#!/usr/bin/env bash
# Build the default ensemble into a model repository (default: models/) with the project's own pipeline:
# three half-width members of three timm families (ResNet, SE-ResNet, ResNeSt: the ensemble of
# docs/results.md), trained with the recommended recipe (RECIPE, docs/results.md: the loss row chosen by
# validation on the quality table) on the Fashion-MNIST-LT benchmark (ρ = 100, 40% symmetric label
# noise), evaluated on the official test set, exported to ONNX and combined by top-1 voting or by the mean
# probability, whichever has the lower validation error (`productrec evaluate --choose-strategy`).
# Resumable: members already exported are kept, an interrupted training resumes.
# Each manifest records the exact training command and the test metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
REPOSITORY=${1:-models}
RUNS=${RUNS:-runs/default}
EPOCHS=${EPOCHS:-30}  # a cap the plateau schedule stops before (at 29, 21 and 27 epochs; 13, 21 and 24 at quarter width): every member trains until its lr falls below --min-lr (docs/results.md)
# The recommended recipe (docs/results.md, "The recommended recipe"): its `productrec train` options. The class offsets
# are fitted after the last epoch, kept only if a cross-fit on validation lowers the error; a finished run gets them on --resume.
read -r -a RECIPE <<< "${RECIPE:---loss bsce --posthoc-adjust --posthoc-offsets}"
# Extra `productrec train` options, e.g. CI's tiny ensemble: TRAIN_ARGS="--max-per-class 60 --test-per-class 10"
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:---test-per-class 300}"
PRODUCTREC=${PRODUCTREC:-.venv/bin/productrec}  # e.g. another checkout's venv
# The members' stage widths (half of ResNet-18's, chosen by validation over a quarter: docs/results.md); the stems follow the first stage (ResNeSt's deep stem: half of it)
CHANNELS=${CHANNELS:-32, 64, 128, 256}
STEM=${CHANNELS%%,*}

build_member() {
    local name=$1 model=$2 stem_width=$3 run="$RUNS/$1"
    if [ -d "$REPOSITORY/$name" ]; then
        echo "== $name: already in $REPOSITORY, kept"
        return
    fi
    echo "== $name ($model): train"
    local resume=()
    [ -f "$run/last.pt" ] && resume=(--resume)  # continues an interrupted run; a finished one returns at once
    "$PRODUCTREC" train --model "$model" --model-kwargs "channels=($CHANNELS)" "stem_width=$stem_width" "${RECIPE[@]}" \
        --imbalance-ratio 100 --noise-rate 0.4 --noise-type symmetric \
        --epochs "$EPOCHS" --lr 0.05 --patience 2 --min-lr 5e-4 --batch-size 64 --workers 1 \
        --output "$run" "${TRAIN_ARGS[@]}" "${resume[@]}"
    echo "== $name: evaluate on the official test set"
    "$PRODUCTREC" evaluate "$run" --batch-size 256
    echo "== $name: export"
    "$PRODUCTREC" export "$run" --repository "$REPOSITORY" --name "$name" --version 1 --ensemble-member
}

start=$(date +%s)
build_member resnet resnet18 "$STEM"
build_member seresnet seresnet18 "$STEM"
build_member resnest resnest14d $(( STEM / 2 ))
echo "== ensemble: the combination (top-1 vote or mean probability) with the lower validation error"
"$PRODUCTREC" evaluate --repository "$REPOSITORY" --choose-strategy --no-memorisation --batch-size 256
echo "== default ensemble in $REPOSITORY ($(( $(date +%s) - start )) s)"

#!/usr/bin/env bash
# The larger version of the quality table on one GPU, in at most 8 minutes: full-width ResNet-18 at 64 px,
# n_max 1000, 30 epochs, the table's rows (TABLE_ROWS) x 4 settings x 3 seeds, in SHARDS processes side by side on the GPU
# (each starts no new run after RUN_MINUTES; a later invocation resumes what is missing), then its section of
# docs/results.md ("GPU table", beside the CPU one) and bench/results/quality_gpu.json.
# With $OUT set (the device machine), the report and the logs are written under $OUT instead (run directories stay local).
# Usage: PY=.venv/bin/python scripts/quality_gpu.sh [extra python -m bench.quality options, e.g. --seeds 1]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARDS=${SHARDS:-12}
RUN_MINUTES=${RUN_MINUTES:-5.5}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
DOCS=docs RESULTS=bench/results/quality_gpu.json LOGS=bench/runs
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/docs" && cp -r docs/. "$OUT/docs/"
    DOCS=$OUT/docs RESULTS=$OUT/quality_gpu.json LOGS=$OUT
fi
mkdir -p "$LOGS"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU: this is the GPU table'; print(torch.cuda.get_device_name())"
COMMON=(--root bench/runs/quality_gpu --title GPU --docs "$DOCS" --results "$RESULTS"
        --model resnet18 --model-kwargs --input-size 64 --epochs 30 --lr 0.1 --patience 3 --min-lr 1e-5 --batch-size 128
        --max-per-class 1000 --val-per-class 100 --test-per-class 1000 --workers 0 "$@")
started=$(date +%s)
for ((shard = 0; shard < SHARDS; shard++)); do
    timeout 450 "$PY" -m bench.quality "${COMMON[@]}" --resume --shard "$shard/$SHARDS" --stop-after-minutes "$RUN_MINUTES" \
        > "$LOGS/quality_gpu_shard$shard.log" 2>&1 &
done
status=0
wait || status=$?
echo "runs: $(( $(date +%s) - started )) s (exit $status; a shard cut by the 450 s guard resumes next time)"
"$PY" -m bench.quality "${COMMON[@]}" --report-only
grep -A3 "## Missing cells" "$DOCS/results.md" | tail -2

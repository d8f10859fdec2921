#!/usr/bin/env bash
# The CPU quality table (docs/results.md): the table's rows (bench.quality.plan.TABLE_ROWS: presets, and presets with post-hoc
# logit adjustment) x 4 settings x 3 seeds, in two niced shards
# (resumable: finished runs are skipped, interrupted ones continue), then the report.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1  # this checkout's code, in every process
mkdir -p bench/runs
for shard in 0 1; do
    nice -n 10 "$PY" -m bench.quality --resume --shard "$shard/2" "$@" > "bench/runs/quality_shard$shard.log" 2>&1 &
done
wait
nice -n 10 "$PY" -m bench.quality --report-only "$@"

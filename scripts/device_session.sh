#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the device tool's `run`, which sets $OUT and copies
# back what lands there, at most 8 files):
#   1. engine timings on CUDA for docs/benchmarks.md: `vo_node.bench` on the rendered demo
#      sequence, because ../shared/data does not travel;
#   2. the large-flow fine-tuning of the shipped model (config/finetune_small_largeflow.yaml),
#      resumed for TRAIN_SECONDS from the run folder's own checkpoint when an earlier call on this
#      machine left one, else from its committed checkpoint in models/training/, else started
#      from the shipped weights. `timeout` then sends SIGTERM, and the
#      trainer writes its checkpoint. The checkpoint and the metrics come back in $OUT, to be
#      copied into models/training/ and committed. RECIPE, CHECKPOINT and NAME select another run.
#      NOTE: the committed large-flow checkpoint is at its final step (3,000 of 3,000), so the
#      default training step ends at once. Set RECIPE and NAME for a new run.
#
# On the device machine (its python3 has torch; see docs/training.md):
#   bash scripts/device_session.sh [TRAIN_SECONDS]        (default 360)
# Dry run on a CPU machine:
#   OUT=/tmp/device_out DEVICE=cpu PYTHON=.venv/bin/python bash scripts/device_session.sh 30
set -uo pipefail

out=${OUT:?set OUT to the folder whose files come back}
seconds=${1:-360}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
recipe=${RECIPE:-config/finetune_small_largeflow.yaml}
name=${NAME:-finetune_largeflow}
checkpoint=${CHECKPOINT:-models/training/${name}_latest.pt}
train_dir=${TRAIN_DIR:-/tmp/vo_$name}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"

echo "== bench on $device"
"$python" -m vo_node.bench --configs small full --device "$device" \
    --output "$out/bench_$device.json" >"$out/bench.log" 2>&1
echo "bench exit status $? (log: bench.log)"
tail -n 12 "$out/bench.log"

echo "== training $recipe for $seconds s on $device"
resume=()
if [ -f "$train_dir/checkpoints/latest.pt" ]; then
    resume=(--resume "$train_dir/checkpoints/latest.pt")
elif [ -f "$checkpoint" ]; then
    resume=(--resume "$checkpoint")
fi
timeout --signal=TERM --kill-after=60 "$seconds" \
    "$python" -m vo_node.train --config "$recipe" --output "$train_dir" "${resume[@]}" \
    "device=$device" >"$out/train.log" 2>&1
status=$?
echo "training exit status $status (124: stopped by the time budget, checkpoint written on SIGTERM)"
tail -c 2000 "$out/train.log" | tr '\r' '\n' | tail -n 8
# Exit status 2 is a usage error, and the run folder then still contains an earlier call's files.
if [ "$status" -eq 2 ]; then
    echo "training did not start (see train.log); no checkpoint is copied back"
    ls -l "$out"
    exit 2
fi

for file in latest.pt best.pt; do
    if [ -f "$train_dir/checkpoints/$file" ]; then
        cp "$train_dir/checkpoints/$file" "$out/${name}_$file"
    fi
done
if [ -f "$train_dir/metrics.csv" ]; then
    cp "$train_dir/metrics.csv" "$out/${name}_metrics.csv"
fi
ls -l "$out"

#!/usr/bin/env bash
# The digits reference run on one CUDA device: all 450 test digits, every built-in purifier, σ ∈ {0.25, 0.5},
# n0 = 100, n = 10,000, α = 0.001, fixed (Cohen et al.) certification, noise drawn on the device, then the
# merged report.
#
#   bash benchmarks/reference_gpu.sh            # about 8 minutes on one H100-class GPU (an estimate: README)
#
# SHARDS processes share the one GPU, each certifying a deterministic 1/SHARDS of the units (--shard K/N,
# the same rows as one process). Several processes are there for the CPU side: sde's and densepure's per-copy
# noise streams are drawn on the CPU (about 25 CPU-minutes at the reference protocol), and SHARDS processes
# draw them on SHARDS cores while the GPU works. Give the job at least SHARDS free CPU cores.
# PRECISION defaults to bf16: the estimate does not fit 8 minutes in fp32. It is recorded in config.json
# (experiment.precision); a run never mixes precisions.
#
# Every setting can be overridden (the test suite runs it on the CPU with tiny settings this way):
#   DEVICE (cuda)  NOISE_DEVICE (device)  PRECISION (bf16)  IMAGES (450)  N0 (100)  N (10000)
#   BATCH (20200)  SHARDS (8)  PURIFIERS (all)  OUT (results/reference-gpu-<time>)  BENCH (bench)
#   ARTIFACTS (1: the merge also writes quality.csv and the figures; 0: rows, summary and report only)
# Run the same command with the same OUT after an interruption: every shard resumes after its last row.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
NOISE_DEVICE=${NOISE_DEVICE:-device}
PRECISION=${PRECISION:-bf16}
IMAGES=${IMAGES:-450}
N0=${N0:-100}
N=${N:-10000}
BATCH=${BATCH:-20200}
SHARDS=${SHARDS:-8}
PURIFIERS=${PURIFIERS:-all}
OUT=${OUT:-results/reference-gpu-$(date +%Y%m%d-%H%M%S)}
BENCH=${BENCH:-bench}
ARTIFACTS=${ARTIFACTS:-1}

common=(--preset reference --purifiers "$PURIFIERS" --num-images "$IMAGES" --n0 "$N0" --n "$N"
        --batch-size "$BATCH" --device "$DEVICE" --noise-device "$NOISE_DEVICE" --precision "$PRECISION")
start=$(date +%s)
mkdir -p "$OUT.shards"
pids=()
for k in $(seq 1 "$SHARDS"); do
    # one torch thread each: the processes, not threads, spread the CPU-side noise over the cores
    OMP_NUM_THREADS=1 "$BENCH" run "${common[@]}" --shard "$k/$SHARDS" --out "$OUT.shards/$k" \
        > "$OUT.shards/$k.log" 2>&1 &
    pids+=($!)
done
failed=0
for k in "${!pids[@]}"; do
    if ! wait "${pids[$k]}"; then
        echo "shard $((k + 1))/$SHARDS failed: $(tail -n 1 "$OUT.shards/$((k + 1)).log")" >&2
        failed=1
    fi
done
if [[ $failed -ne 0 ]]; then
    echo "rows written are kept; run the same command again to resume" >&2
    exit 1
fi
certified=$(date +%s)
shard_dirs=()
for k in $(seq 1 "$SHARDS"); do shard_dirs+=("$OUT.shards/$k"); done
if [[ -e "$OUT/config.json" ]]; then
    echo "$OUT is merged already (from a previous run of this script): reporting it" >&2
else
    no_report=()
    [[ "$ARTIFACTS" == 1 ]] || no_report=(--no-report)
    "$BENCH" merge --out "$OUT" --device "$DEVICE" "${no_report[@]}" "${shard_dirs[@]}" > "$OUT.shards/merge.log"
fi
"$BENCH" report "$OUT" --alpha-aware 0.05
end=$(date +%s)
echo "certification $((certified - start)) s, merge + report $((end - certified)) s, total $((end - start)) s" \
     "($SHARDS shards on $DEVICE, precision $PRECISION); run directory: $OUT"

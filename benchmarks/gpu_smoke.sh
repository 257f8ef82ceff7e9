#!/usr/bin/env bash
# CIFAR-10 end to end on a GPU in one command: real CIFAR-10 (downloaded by torchvision when missing), the
# paper's hub checkpoints, a short certification, then throughput per purifier.
#
#   bash benchmarks/gpu_smoke.sh                 # needs network the first time (data + checkpoints)
#
# Every input can be overridden (the CPU check in the README runs it on test fixtures this way):
#   DATA_DIR (./data)  DDPM (google/ddpm-cifar10-32)  CLASSIFIER (hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10)
#   CM (unset: a consistency model folder, e.g. from `bench train distill`; adds consistency:class_label=none)
#   DEVICE (cuda)  NOISE_DEVICE (device: noise drawn on DEVICE, the fast GPU path)  IMAGES (20)  N0 (100)  N (1000)  BATCH (500)  SIGMAS (0.25,0.5,1.0)  OUT (results/gpu-smoke-<time>)
#   BENCH (bench)  PYTHON (python3, with pandas: the venv's)
set -euo pipefail
DATA_DIR=${DATA_DIR:-data}
DDPM=${DDPM:-google/ddpm-cifar10-32}
CLASSIFIER=${CLASSIFIER:-hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10}
DEVICE=${DEVICE:-cuda}
NOISE_DEVICE=${NOISE_DEVICE:-device}
IMAGES=${IMAGES:-20}
N0=${N0:-100}
N=${N:-1000}
BATCH=${BATCH:-500}
SIGMAS=${SIGMAS:-0.25,0.5,1.0}
OUT=${OUT:-results/gpu-smoke-$(date +%Y%m%d-%H%M%S)}
BENCH=${BENCH:-bench}
PYTHON=${PYTHON:-python3}

PURIFIERS="identity,ddpm:model=$DDPM,pfode:model=$DDPM:steps=5:solver=heun,sde:model=$DDPM:steps=5"
if [[ -n "${CM:-}" ]]; then PURIFIERS="$PURIFIERS,consistency:model=$CM"; fi

download=()
[[ -d "$DATA_DIR/cifar-10-batches-py" ]] || download=(--download)
start=$(date +%s)
"$BENCH" run --dataset cifar10 --data-dir "$DATA_DIR" "${download[@]}" --classifier "$CLASSIFIER" \
    --purifiers "$PURIFIERS" --num-images "$IMAGES" --n0 "$N0" --n "$N" --batch-size "$BATCH" \
    --sigmas "$SIGMAS" --device "$DEVICE" --noise-device "$NOISE_DEVICE" --out "$OUT"
end=$(date +%s)

"$PYTHON" - "$OUT" "$N0" "$N" "$((end - start))" <<'PY'
import json, sys
from pathlib import Path

import pandas as pd

run, n0, n, wall = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = json.loads((run / "config.json").read_text())
env = config["environment"]
print(f"\n{env['device_name']} · {len(config['experiment']['image_indices'])} images · n0={n0} n={n} · "
      f"batch {env['batch_size']} · whole command {wall} s")
print(f"{'purifier':<40} {'sigma':>6} {'s/image':>9} {'noisy samples/s':>16} {'NFE':>5}")
for entry in config["files"]:
    rows = pd.read_csv(run / entry["file"], sep="\t")
    per_image = rows["time"].mean()
    print(f"{entry['purifier']:<40} {entry['sigma']:>6g} {per_image:>9.3f} {(n0 + n) / per_image:>16.0f} "
          f"{rows['nfe'].mean():>5.2g}")
PY

#!/usr/bin/env bash
# The demo: every pipeline of the engine on the bundled demo data, one embedded Ray, weight-free models.
# Usage: pipelines/demo.sh [DEMO_DATA_DIR] [OUT_DIR]   (make demo calls it after `idd demo-data`)
set -euo pipefail
DEMO=${1:-demo_data}
OUT=${2:-shards}
IDD=${IDD:-.venv/bin/idd}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ "$DEMO" != "demo_data" ]; then ln -sfn "$DEMO" demo_data; fi

# Task data (paper 4.1): keypoints, semantic and referring segmentation.
TASKS=(
  configs/pipelines/keypoints_coco.yaml
  configs/pipelines/semseg_cocostuff.yaml
  configs/pipelines/refseg_refcoco.yaml
  configs/pipelines/refseg_grefcoco.yaml
)
"$IDD" run "${TASKS[@]}" --out "$OUT"
"$IDD" inspect "$OUT"

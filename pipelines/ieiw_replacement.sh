#!/usr/bin/env bash
# IEIW object replacement on the demo data, weight-free profile, in its two steps:
#   1. the patch gallery (a global pass over every selected region: crops, embeddings, FAISS index),
#   2. the pipeline (retrieve a reference from another image, Poisson-blend it in, captions, instruction,
#      quality filter) on the embedded Ray.
# Usage: pipelines/ieiw_replacement.sh [DEMO_DATA_DIR] [OUT_DIR]   (after `idd demo-data DEMO_DATA_DIR`)
set -euo pipefail
DEMO=${1:-demo_data}
OUT=${2:-shards}
IDD=${IDD:-.venv/bin/idd}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
"$IDD" gallery build configs/pipelines/ieiw_replacement_gallery.yaml --out "$OUT/ieiw_gallery" \
  --set sources.0.root="$DEMO/openimages" --set sources.1.root="$DEMO/sa1b"
"$IDD" run configs/pipelines/ieiw_replacement.yaml --out "$OUT" \
  --set source.root="$DEMO/openimages" --set stages.retrieve_reference.gallery="$OUT/ieiw_gallery"

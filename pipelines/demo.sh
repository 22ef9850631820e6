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

CONFIGS=(
  # Task data (paper 4.1): keypoints, semantic and referring segmentation.
  configs/pipelines/keypoints_coco.yaml
  configs/pipelines/keypoints_mpii.yaml
  configs/pipelines/keypoints_crowdpose.yaml
  configs/pipelines/keypoints_aic.yaml
  configs/pipelines/semseg_cocostuff.yaml
  configs/pipelines/refseg_refcoco.yaml
  configs/pipelines/refseg_grefcoco.yaml
  # Enhancement pairs.
  configs/pipelines/deblur_gopro.yaml
  configs/pipelines/deblur_reds.yaml
  configs/pipelines/denoise_sidd.yaml
  configs/pipelines/dewatermark_clwd.yaml
  # Existing editing datasets, ingested as they are.
  configs/pipelines/edit_instructpix2pix.yaml
  configs/pipelines/edit_magicbrush.yaml
  configs/pipelines/edit_gier.yaml
  configs/pipelines/edit_gqa_inpaint.yaml
  # IEIW (paper 3.2): object removal and addition.
  configs/pipelines/ieiw_removal.yaml
  # Pretraining adaptation (paper 3.3): rendered task targets + "<image caption><suffix>" (task adapt).
  configs/pipelines/adapt_keypoints_coco.yaml
  configs/pipelines/adapt_semseg_cocostuff.yaml
  configs/pipelines/adapt_refseg_refcoco.yaml
)
# IEIW object replacement needs its patch gallery (a global pass: crops, embeddings, FAISS index) first.
"$IDD" gallery build configs/pipelines/ieiw_replacement_gallery.yaml --out "$OUT/ieiw_gallery"
if [ "$OUT" = "shards" ]; then
  CONFIGS+=(configs/pipelines/ieiw_replacement.yaml)   # its config reads shards/ieiw_gallery
  EXTRA=()
else
  EXTRA=(configs/pipelines/ieiw_replacement.yaml)
fi
# One embedded Ray for all of them; every config is validated before any work starts.
"$IDD" run "${CONFIGS[@]}" --out "$OUT"
if [ ${#EXTRA[@]} -gt 0 ]; then
  "$IDD" run "${EXTRA[@]}" --out "$OUT" --set stages.retrieve_reference.gallery="$OUT/ieiw_gallery"
fi
"$IDD" mix configs/mixtures/instructdiffusion.yaml --root "$OUT" --out "$OUT/mixture.json"
"$IDD" mix configs/mixtures/adapt.yaml --root "$OUT" --out "$OUT/mixture-adapt.json"
# The editing benchmark (paper 4.4): align and eval halves of the demo JSONL (a rerun rebuilds it whole).
"$IDD" benchmark build configs/benchmark/editbench.yaml --out "$OUT"
"$IDD" inspect "$OUT"
# The dataset card over every output: Hugging Face datasets.load_dataset("$OUT", "<output name>") reads it.
"$IDD" card "$OUT"

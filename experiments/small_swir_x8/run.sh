#!/usr/bin/env bash
# SWIR x8 (B11, B12 at 20 m -> 160 m LR, Sentinel-2 PSF): the experiment's recipe as it is, and with
# the LR-consistency term (L1 and spectral-angle variants), evaluated on the test area with the NBR2
# error split into water (HR B11 reflectance < 0.03) and land. Nodata is masked in every run.
#   bash experiments/small_swir_x8/run.sh     # ~20 min on 2 CPU cores (SHORT="trainer.max_steps=..." shortens both runs alike)
#   python experiments/results.py swir-x8-water experiments/small_swir_x8/water.md --study
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/small-swir-x8-study}
BIN=${BIN:-.venv/bin}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}
declare -A variants=(
  [baseline]=""
  [lr_consistency_l1]="loss.weights.lr_consistency=1.0"
  [lr_consistency_sam]="loss.weights.lr_consistency=0.1 loss.terms.lr_consistency.distance=sam"
)
for name in ${VARIANTS:-baseline lr_consistency_l1 lr_consistency_sam}; do
  dir=$OUT/$name
  # shellcheck disable=SC2086
  [ -f "$dir/model/generator.safetensors" ] || "$BIN/srgan-train" experiment=small_swir_x8 tracking.experiment_name=swir-x8-water trainer.progress=false ${SHORT:-} \
    tracking.run_name="$name" ${variants[$name]} hydra.run.dir="$dir"
  [ -f "$dir/eval.json" ] || "$BIN/srgan-eval" model="$dir" split=test figure=false
done

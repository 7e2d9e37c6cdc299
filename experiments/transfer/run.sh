#!/usr/bin/env bash
# Transfer: Sentinel-2-trained generators (fixed box degradation vs random degradations drawn on the
# device) on data they never saw, the bundled NAIP crop: with its own degradation (box x4, 8-bit DN),
# and with LR made as a satellite would see NAIP (a Gaussian PSF of 1 px, and Sentinel-2's 10 m PSF,
# sigma 2.1 HR px at x4, with noise at SNR 100); then after a short init_from fine-tune on NAIP's
# training area, beside a NAIP model trained from scratch for the same steps.
#   bash experiments/transfer/run.sh      # ~15 min on 2 CPU cores (reuses the perception-distortion pretrain)
#   python experiments/transfer/table.py  # writes experiments/transfer/results.md
# RANDOM_ARGS overrides the random degradation's ranges; its default spans no PSF (width 0.05) to 1.5x
# Sentinel-2's, so that box-only LR (NAIP's own) lies inside what the model was trained on.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/transfer}
FIXED=${FIXED:-outputs/perception-distortion/pretrain}
STEPS=${STEPS:-1000}
TUNE=${TUNE:-300}
BIN=${BIN:-.venv/bin}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}
common=(experiment=demo tracking.experiment_name=transfer trainer.progress=false trainer.ckpt_every=0
        loss.weights.adversarial=0)
map='{R:B04,G:B03,B:B02,NIR:B08}'
mkdir -p "$OUT/eval"

if [ ! -f "$FIXED/model/generator.safetensors" ]; then  # the same recipe as the study's pretrain
  FIXED=$OUT/s2_fixed
  [ -f "$FIXED/model/generator.safetensors" ] || "$BIN/srgan-train" "${common[@]}" tracking.run_name=s2_fixed \
    schedule.pretrain_steps="$STEPS" trainer.max_steps="$STEPS" hydra.run.dir="$FIXED"
fi
rand_args=${RANDOM_ARGS:-dataset.degradation.psf_width=[0.05,1.5]}
RANDOM_RUN=$OUT/s2_random
# shellcheck disable=SC2086
[ -f "$RANDOM_RUN/model/generator.safetensors" ] || "$BIN/srgan-train" "${common[@]}" tracking.run_name=s2_random \
  dataset/degradation=random $rand_args schedule.pretrain_steps="$STEPS" trainer.max_steps="$STEPS" hydra.run.dir="$RANDOM_RUN"

# Home ground first: both on the Sentinel-2 test area (fixed box degradation, as the study's).
for pair in "fixed:$FIXED" "random:$RANDOM_RUN"; do
  "$BIN/srgan-eval" model="${pair#*:}" split=test figure=false overwrite=true output="$OUT/eval/${pair%%:*}_s2.json"
done
naip=(dataset=naip_rgbn_x4 split=test figure=false overwrite=true)
# Zero-shot on NAIP in its own units (DN / 255), its bands named as the model's: with its own LR
# (box x4), then with LR from a blurring sensor (the test area's operator is seeded).
naip_evals() {  # <name> <model folder>
  "$BIN/srgan-eval" model="$2" "${naip[@]}" band_map="$map" normalize_as=dataset output="$OUT/eval/$1_naip.json"
  "$BIN/srgan-eval" model="$2" "${naip[@]}" band_map="$map" normalize_as=dataset \
    dataset.degradation.psf=1.0 output="$OUT/eval/$1_naip_psf1.json"
  "$BIN/srgan-eval" model="$2" "${naip[@]}" band_map="$map" normalize_as=dataset \
    dataset.degradation.psf=2.1 dataset.degradation.snr=100 output="$OUT/eval/$1_naip_s2psf.json"
}
for pair in "fixed:$FIXED" "random:$RANDOM_RUN"; do
  name=${pair%%:*} model=${pair#*:}
  naip_evals "$name" "$model"
  dir=$OUT/${name}_naip_tuned
  [ -f "$dir/model/generator.safetensors" ] || "$BIN/srgan-train" "${common[@]}" dataset=naip_rgbn_x4 \
    tracking.run_name="${name}_naip_tuned" init_from="$model" init.band_map="$map" \
    schedule.pretrain_steps="$TUNE" trainer.max_steps="$TUNE" schedule.optimizer_g.lr=2e-4 hydra.run.dir="$dir"
  "$BIN/srgan-eval" model="$dir" "${naip[@]}" output="$OUT/eval/${name}_naip_tuned.json"
done
dir=$OUT/naip_scratch
[ -f "$dir/model/generator.safetensors" ] || "$BIN/srgan-train" "${common[@]}" dataset=naip_rgbn_x4 \
  tracking.run_name=naip_scratch schedule.pretrain_steps="$TUNE" trainer.max_steps="$TUNE" hydra.run.dir="$dir"
"$BIN/srgan-eval" model="$dir" "${naip[@]}" output="$OUT/eval/naip_scratch.json"

# Repeats: both Sentinel-2 models trained again from other seeds (SEEDS="" skips), zero-shot on NAIP.
for seed in ${SEEDS-1 2}; do
  for name in fixed random; do
    dir=$OUT/s2_${name}_seed$seed
    extra=(); [ "$name" = random ] && extra=(dataset/degradation=random $rand_args dataset.degradation.seed="$seed")
    [ -f "$dir/model/generator.safetensors" ] || "$BIN/srgan-train" "${common[@]}" tracking.run_name="s2_${name}_seed$seed" \
      trainer.seed="$seed" "${extra[@]}" schedule.pretrain_steps="$STEPS" trainer.max_steps="$STEPS" hydra.run.dir="$dir"
    naip_evals "${name}_seed$seed" "$dir"
  done
done

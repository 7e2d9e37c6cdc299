#!/usr/bin/env bash
# The perception-distortion study: one PSNR-pretrained generator (L1 only), then short fine-tunes
# from it (init_from) that differ only in the loss, each evaluated on the held-out test area.
#   STEPS=300 bash experiments/perception_distortion/run.sh  # ~2.5 h on 2 CPU cores (perceptual runs 8-18 min each)
#   STEPS=200 bash experiments/perception_distortion/run.sh  # shorter fine-tunes
# Then: python experiments/results.py perception-distortion experiments/perception_distortion/results.md --study
#       python experiments/perception_distortion/figure.py
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/perception-distortion}
STEPS=${STEPS:-400}
PRE=${PRE:-1000}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlruns.db}
BIN=${BIN:-.venv/bin}
common=(experiment=demo tracking.experiment_name=perception-distortion trainer.progress=false trainer.ckpt_every=0)

if [ ! -f "$OUT/pretrain/model/generator.safetensors" ]; then
  "$BIN/srgan-train" "${common[@]}" tracking.run_name=psnr_pretrain loss.weights.adversarial=0 \
    schedule.pretrain_steps="$PRE" trainer.max_steps="$PRE" hydra.run.dir="$OUT/pretrain"
fi

# The fine-tunes: the same start, steps, learning rate and EMA; D (fresh) warms up for 50 steps.
tune=(init_from="$OUT/pretrain" trainer.max_steps="$STEPS" schedule.pretrain_steps=0 schedule.ramp.steps=50
      schedule.discriminator.warmup_steps=50 schedule.optimizer_g.lr=2e-4 trainer.val_every=200)
# L1 + perceptual (VGG16 on bands 0-2, B04 B03 B02, as one RGB image: one pass, not four) + vanilla GAN 0.005.
pgan="loss=full loss.terms.perceptual.rgb_bands=[0,1,2] loss.weights.adversarial=0.005"
declare -A variants=(
  [l1]="loss.weights.adversarial=0"
  [l1_sam]="loss=full loss.weights.sam=0.1 loss.weights.adversarial=0"
  [gan_vanilla]="loss.weights.adversarial=0.005 loss.adversarial.gan_type=vanilla"
  [gan_ragan]="loss.weights.adversarial=0.005 loss.adversarial.gan_type=ragan"
  [gan_hinge]="loss.weights.adversarial=0.005 loss.adversarial.gan_type=hinge"
  [l1_perceptual_gan]="$pgan loss.weights.perceptual=0.1"
  [l1_perceptual_gan_p02]="$pgan loss.weights.perceptual=0.02"
  [l1_perceptual_gan_p05]="$pgan loss.weights.perceptual=0.05"
  [l1_perceptual_gan_p005]="$pgan loss.weights.perceptual=0.005"
  [l1_perceptual_gan_p01]="$pgan loss.weights.perceptual=0.01"
  # Repeats from another seed (data order, D's initialisation) of the L1 reference and the passing point.
  [l1_seed1]="loss.weights.adversarial=0 trainer.seed=1"
  [l1_perceptual_gan_p005_seed1]="$pgan loss.weights.perceptual=0.005 trainer.seed=1"
  [l1_perceptual_gan_p01_seed1]="$pgan loss.weights.perceptual=0.01 trainer.seed=1"
  [l1_perceptual_gan_p01_lrc_seed1]="$pgan loss.weights.perceptual=0.01 loss.weights.lr_consistency=1.0 trainer.seed=1"
  [l1_perceptual_gan_p01_lrc]="$pgan loss.weights.perceptual=0.01 loss.weights.lr_consistency=1.0"
  [l1_perceptual_gan_p05_lrc]="$pgan loss.weights.perceptual=0.05 loss.weights.lr_consistency=1.0"
  [esrgan]="loss=esrgan loss.terms.perceptual.rgb_bands=[0,1,2]"
  [gan_lr_consistency]="loss.weights.adversarial=0.005 loss.weights.lr_consistency=1.0"
  # The adversarial weight raised fourfold (the frontier's next point along the GAN axis).
  [gan_ragan_w02]="loss.weights.adversarial=0.02 loss.adversarial.gan_type=ragan"
  [gan_hinge_w02]="loss.weights.adversarial=0.02 loss.adversarial.gan_type=hinge"
  [gan_vanilla_w02]="loss.weights.adversarial=0.02 loss.adversarial.gan_type=vanilla"
  [gan_ragan_w05]="loss.weights.adversarial=0.05 loss.adversarial.gan_type=ragan"
)
order=(${VARIANTS:-l1 l1_sam gan_vanilla gan_ragan gan_hinge gan_vanilla_w02 gan_ragan_w02 gan_hinge_w02 gan_ragan_w05
  l1_perceptual_gan l1_perceptual_gan_p02 l1_perceptual_gan_p05 l1_perceptual_gan_p005 l1_perceptual_gan_p01 l1_perceptual_gan_p01_lrc esrgan gan_lr_consistency
  l1_seed1 l1_perceptual_gan_p005_seed1 l1_perceptual_gan_p01_seed1 l1_perceptual_gan_p01_lrc_seed1})
for name in pretrain "${order[@]}"; do
  dir="$OUT/$name"
  if [ "$name" != pretrain ] && [ ! -f "$dir/model/generator.safetensors" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$BIN/srgan-train" "${common[@]}" "${tune[@]}" tracking.run_name="$name" ${variants[$name]} ${EXTRA:-} hydra.run.dir="$dir"
    echo "$name: $(( $(date +%s) - start )) s" >> "$OUT/minutes.txt"
  fi
  if [ ! -f "$dir/eval.json" ]; then
    "$BIN/srgan-eval" model="$dir" split=test figure=false
  fi
done

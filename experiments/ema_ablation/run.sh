#!/usr/bin/env bash
# EMA ablation: the small RGB-NIR x4 set-up twice with the same seed, EMA on (decay 0.99) and off,
# validating every 100 steps; then the results table with the spread over the last 5 validations.
#   bash experiments/ema_ablation/run.sh            (about 10 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
for ema in true false; do
  $PY -m srgan.train experiment=small_rgbn_x4 tracking.experiment_name=ema-ablation \
    schedule.ema.enabled=$ema trainer.val_every=100 tracking.run_name=ema-$ema \
    hydra.run.dir=outputs/ema-ablation/ema-$ema
done
$PY experiments/results.py ema-ablation experiments/ema_ablation/results.md --last 5

#!/usr/bin/env bash
# Uncertainty and downstream fidelity on the bundled Sentinel-2 sample (2 CPU cores: about 45 min).
# A stochastic generator and three seeds of the demo RCAB, each trained as `make demo` trains; then
# srgan-eval with noise sampling (16 draws) and with the 3-member ensemble, the spread factor
# fitted on the validation area, reported on the test area; results.md from the eval JSONs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/uncertainty}
PY=${PY:-.venv/bin/python}
$PY -m srgan.train experiment=demo generator=stochastic hydra.run.dir=$OUT/stochastic
for seed in 0 1 2; do
  $PY -m srgan.train experiment=demo trainer.seed=$seed hydra.run.dir=$OUT/rcab_s$seed
done
$PY -m srgan.evaluate model=$OUT/stochastic uncertainty=noise uncertainty.samples=16 output=$OUT/noise.json overwrite=true
$PY -m srgan.evaluate model=$OUT/rcab_s0 uncertainty=ensemble \
  "uncertainty.members=[$OUT/rcab_s1,$OUT/rcab_s2]" output=$OUT/ensemble.json overwrite=true
# Downstream on a SWIR set too (NBR2): the x8 B11/B12 model of experiments/small_swir_x8.
$PY -m srgan.train experiment=small_swir_x8 hydra.run.dir=$OUT/swir_x8
$PY -m srgan.evaluate model=$OUT/swir_x8 dataset=s2_swir_x8 output=$OUT/swir_x8.json overwrite=true
$PY experiments/uncertainty/table.py $OUT/noise.json $OUT/ensemble.json $OUT/swir_x8.json > experiments/uncertainty/results.md

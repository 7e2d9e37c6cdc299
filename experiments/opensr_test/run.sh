#!/usr/bin/env bash
# opensr-test itself on the demo model (2 CPU cores: about 6 min). The demo's held-out test area is
# written as a test set in opensr-test's two forms (make_set.py), and srgan-eval runs the package
# on each image of both forms beside srgan's own measures; results.md from the eval JSONs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/opensr_test}
PY=${PY:-.venv/bin/python}
$PY -m srgan.train experiment=demo hydra.run.dir=$OUT/demo
$PY experiments/opensr_test/make_set.py $OUT/set demo_test dataset=s2_rgbn_x4
for form in pickle geotiff; do
  $PY -m srgan.evaluate model=$OUT/demo dataset=opensr_test dataset.name=demo_test dataset.root=$OUT/set \
    dataset.format=$form benchmark=opensr_test output=$OUT/eval_$form.json overwrite=true
done
$PY experiments/opensr_test/table.py $OUT/eval_pickle.json $OUT/eval_geotiff.json > experiments/opensr_test/results.md

"""Write the notebooks from the cells below (kept as code so that diffs stay readable).

python notebooks/build.py        # rewrites notebooks/*.ipynb (outputs empty)
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

DATA = [
    new_markdown_cell(
        "# 01 — The data: bands, degradations, splits\n\n"
        "What a training run sees from the bundled Sentinel-2 sample: the bands by name, the areas of the "
        "train / validation / test split, and the LR each degradation makes from the same HR patch."
    ),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "import numpy as np\n"
        "from hydra import compose, initialize_config_dir\n"
        "from hydra.utils import instantiate\n\n"
        "from srgan.config import CONF_DIR\n"
        "from srgan.viz import stretch, to_rgb\n\n\n"
        "def dataset(*overrides):\n"
        "    with initialize_config_dir(config_dir=str(CONF_DIR), version_base='1.3'):\n"
        "        cfg = compose('train', overrides=list(overrides))\n"
        "    return instantiate(cfg.dataset, _convert_='all')\n\n"
        "data = dataset('dataset=s2_rgbn_x4')\n"
        "print(data.band_names, data.dtype, data.normalization)"
    ),
    new_markdown_cell("## Bands (reflectance) and the split areas"),
    new_code_cell(
        "fig, axes = plt.subplots(1, len(data.band_names) + 1, figsize=(16, 4))\n"
        "whole = np.concatenate([data.region(s).hr.numpy() for s in ('train', 'val', 'test')], axis=-1)\n"
        "for ax, name, band in zip(axes, data.band_names, whole):\n"
        "    ax.imshow(band, cmap='gray', vmax=np.percentile(band, 99))\n"
        "    ax.set_title(name)\n"
        "    ax.axis('off')\n"
        "colors = {'train': 'tab:blue', 'val': 'tab:orange', 'test': 'tab:green'}\n"
        "mask = np.zeros(whole.shape[1:] + (3,))\n"
        "start = 0\n"
        "for split in ('train', 'val', 'test'):\n"
        "    width = data.region(split).hr.shape[-1]\n"
        "    mask[:, start : start + width] = plt.matplotlib.colors.to_rgb(colors[split])\n"
        "    start += width\n"
        "axes[-1].imshow(mask)\n"
        "axes[-1].set_title('train | val | test (gaps removed)')\n"
        "axes[-1].axis('off')\n"
        "plt.show()"
    ),
    new_markdown_cell("## One HR patch and the LR of each degradation"),
    new_code_cell(
        "options = ['box', 'bicubic', 's2_psf', 's2_realistic']\n"
        "fig, axes = plt.subplots(1, len(options) + 1, figsize=(18, 4))\n"
        "hr = data.train_dataset(4, seed=0, augment=False)[1]['hr']\n"
        "rgb = data.rgb_indices\n"
        "# srgan.viz: the one band-to-RGB place (one 1-99 % stretch from HR, shared by every panel)\n"
        "lo, hi = stretch(hr, rgb, per_band=False)\n"
        "\n\n"
        "def show(x):\n"
        "    return to_rgb(x, rgb, lo, hi).numpy()\n\n\n"
        "axes[0].imshow(show(hr))\n"
        "axes[0].set_title('HR (10 m)')\n"
        "for ax, option in zip(axes[1:], options):\n"
        "    degradation = dataset(f'dataset/degradation={option}').degradation\n"
        "    ax.imshow(show(degradation(hr, np.random.default_rng(0))))\n"
        "    ax.set_title(f'LR: {option}')\n"
        "for ax in axes:\n"
        "    ax.axis('off')\n"
        "plt.show()"
    ),
]

COMPARE = [
    new_markdown_cell(
        "# 02 — Comparing runs from MLflow\n\n"
        "Query the runs of one MLflow experiment (a sweep), plot their loss and discriminator curves, "
        "tabulate their validation metrics and put their last image grids side by side. Set "
        "`MLFLOW_TRACKING_URI` and `SRGAN_EXPERIMENT` (default: the `make sweep` grid; `make demo` "
        "makes the `demo` experiment). A store or experiment that does not exist yet is an error that "
        "says which command makes it."
    ),
    new_code_cell(
        "import os\n"
        "import tempfile\n\n"
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n\n"
        "from srgan.runs import find_experiment, latest_grid, tracking_client, training_runs\n\n"
        "client = tracking_client(os.environ.get('MLFLOW_TRACKING_URI', 'sqlite:///../mlruns.db'))\n"
        "experiment = find_experiment(client, os.environ.get('SRGAN_EXPERIMENT', 'sweep-loss-weights'))\n"
        "runs = training_runs(client, experiment)\n"
        "print(len(runs), 'runs')"
    ),
    new_code_cell(
        "def curve(run, key):\n"
        "    history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)\n"
        "    return [m.step for m in history], [m.value for m in history]\n\n"
        "keys = ['train/g_total', 'train/l1', 'train/d_loss', 'train/d_real_prob', 'train/d_fake_prob']\n"
        "fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5))\n"
        "for run in runs:\n"
        "    for ax, key in zip(axes, keys):\n"
        "        ax.plot(*curve(run, key), label=run.info.run_name)\n"
        "        ax.set_title(key)\n"
        "        ax.set_xlabel('generator step')\n"
        "fig.legend(*axes[0].get_legend_handles_labels(), loc='lower center', ncol=2, fontsize=7,\n"
        "           bbox_to_anchor=(0.5, -0.25))\n"
        "plt.show()"
    ),
    new_code_cell(
        "keys = ['val/psnr', 'val/bicubic_psnr', 'val/psnr_gain_over_bicubic', 'val/ssim', 'val/sam_deg']\n"
        "table = pd.DataFrame([{'run': r.info.run_name, 'status': r.info.status,\n"
        "                       **{k: r.data.metrics.get(k) for k in keys}} for r in runs])\n"
        "table.sort_values('val/psnr', ascending=False)"
    ),
    new_code_cell(
        "cols = min(4, len(runs))\n"
        "rows = -(-len(runs) // cols)\n"
        "fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)\n"
        "for ax in axes.flat[len(runs):]:\n"
        "    ax.axis('off')\n"
        "for ax, run in zip(axes.flat, runs):\n"
        "    grid = latest_grid(client, run.info.run_id)\n"
        "    if grid:\n"
        "        local = client.download_artifacts(run.info.run_id, grid, tempfile.mkdtemp())\n"
        "        ax.imshow(plt.imread(local))\n"
        "    ax.set_title(run.info.run_name, fontsize=8)\n"
        "    ax.axis('off')\n"
        "plt.show()"
    ),
]


def main() -> None:
    for name, cells in (("01_data.ipynb", DATA), ("02_compare_runs.ipynb", COMPARE)):
        notebook = new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()

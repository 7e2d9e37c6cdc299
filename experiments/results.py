"""Write an experiment's ``results.md`` from MLflow: one row per finished run, plus bicubic.

    python experiments/results.py small-rgbn-x4 experiments/small_rgbn_x4/results.md [--uri sqlite:///mlruns.db]
    python experiments/results.py small-rgbn-x4 - --last 3      # to stdout; spread over the last 3 validations

Columns: the run's name and overrides, its final validation PSNR / SSIM / SAM and the bicubic values on
the same area (logged by every validation), the test-area figures when `srgan-eval` was run on the
model, and the spread (standard deviation and range) of validation PSNR over the last N validations,
which shows how steady a run ended.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from srgan.tracking import _local_uri  # noqa: E402


def _last(client: MlflowClient, run_id: str, key: str, n: int) -> list[float]:
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.value for m in history[-n:]]


def _test_psnr(m: dict[str, float]) -> tuple[float, float]:
    """SR and bicubic test PSNR: ``eval_test_psnr`` and its ``_gain`` (runs logged before srgan-eval
    wrote summaries have ``test/sr/psnr`` and ``test/bicubic/psnr``)."""
    nan = float("nan")
    if "eval_test_psnr" in m:
        return m["eval_test_psnr"], m["eval_test_psnr"] - m.get("eval_test_psnr_gain", nan)
    return m.get("test/sr/psnr", nan), m.get("test/bicubic/psnr", nan)


def table(client: MlflowClient, experiment: str, last: int) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000)
    runs = [r for r in runs if "val/psnr" in r.data.metrics]
    if not runs:
        raise SystemExit(f"experiment {experiment!r} has no finished training run")
    head = (
        f"| run | overrides | val PSNR | val SSIM | val SAM | bicubic PSNR | bicubic SSIM | test PSNR | "
        f"test bicubic PSNR | PSNR std (last {last}) | PSNR range (last {last}) |"
    )
    lines = [head, "|" + "---|" * 11]
    for run in sorted(runs, key=lambda r: r.info.start_time):
        m = run.data.metrics
        spread = _last(client, run.info.run_id, "val/psnr", last)
        std = statistics.pstdev(spread) if len(spread) > 1 else float("nan")
        cells = [
            run.info.run_name,
            f"`{run.data.tags.get('overrides', '')}`",
            f"{m['val/psnr']:.3f}",
            f"{m.get('val/ssim', float('nan')):.4f}",
            f"{m.get('val/sam_deg', float('nan')):.3f}",
            f"{m.get('val/bicubic_psnr', float('nan')):.3f}",
            f"{m.get('val/bicubic_ssim', float('nan')):.4f}",
            f"{_test_psnr(m)[0]:.3f}",
            f"{_test_psnr(m)[1]:.3f}",
            f"{std:.4f}",
            f"{max(spread) - min(spread):.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The --study table: srgan-eval's test-area numbers that the MLflow run holds (eval_<where>_<key>),
# lower is better except PSNR and SSIM.
STUDY = (
    ("psnr", "PSNR dB", "{:.3f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("sam_deg", "SAM deg", "{:.3f}"),
    ("lpips", "LPIPS", "{:.4f}"),
    ("hallucination_share", "halluc. share", "{:.3f}"),
    ("ndvi_mae", "NDVI MAE", "{:.4f}"),
    ("nbr2_mae", "NBR2 MAE", "{:.4f}"),
    ("nbr2_mae_water", "NBR2 MAE water", "{:.4f}"),
)


def study_table(client: MlflowClient, experiment: str, where: str = "test") -> str:
    """One row per finished run that was evaluated on ``where`` (its ``eval_<where>_*`` metrics),
    its training minutes (MLflow start to end), and a bicubic row from the logged gains."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000)
    runs = sorted((r for r in runs if f"eval_{where}_psnr" in r.data.metrics), key=lambda r: r.info.start_time)
    if not runs:
        raise SystemExit(f"experiment {experiment!r} has no finished run evaluated on {where!r} (run srgan-eval)")
    columns = [c for c in STUDY if any(f"eval_{where}_{c[0]}" in r.data.metrics for r in runs)]
    head = "| run | " + " | ".join(c[1] for c in columns) + " | steps | train min | init_from |"
    lines = [head, "|" + "---|" * (len(columns) + 4)]

    def row(name: str, values: dict[str, float], minutes: str, parent: str, steps: str = "") -> str:
        cells = [fmt.format(values[key]) if key in values else "" for key, _, fmt in columns]
        return f"| {name} | " + " | ".join(cells) + f" | {steps} | {minutes} | {parent} |"

    first = runs[0].data.metrics
    bicubic = {
        k: first[f"eval_{where}_{k}"] - first[f"eval_{where}_{k}_gain"]
        for k, _, _ in columns
        if f"eval_{where}_{k}_gain" in first
    }
    lines.append(row("bicubic", bicubic, "", ""))
    for run in runs:
        m = run.data.metrics
        values = {k: m[f"eval_{where}_{k}"] for k, _, _ in columns if f"eval_{where}_{k}" in m}
        minutes = f"{(run.info.end_time - run.info.start_time) / 60000:.1f}" if run.info.end_time else ""
        parent = run.data.tags.get("init_from", "")
        steps = run.data.params.get("trainer.max_steps", "")
        lines.append(row(run.info.run_name, values, minutes, f"`{Path(parent).name}`" if parent else "", steps))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", help="MLflow experiment name")
    parser.add_argument("output", help="results.md path, or - for stdout")
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"))
    parser.add_argument("--last", type=int, default=3, help="validations over which the spread is taken")
    parser.add_argument("--study", action="store_true", help="the test-area evaluation table (srgan-eval's numbers)")
    parser.add_argument("--where", default="test", help="with --study: eval_<where>_* (e.g. naip_rgbn_x4_test)")
    args = parser.parse_args()
    client = MlflowClient(tracking_uri=_local_uri(args.uri))
    if args.study:
        text = (
            f"# Results: MLflow experiment `{args.experiment}`, evaluated on `{args.where}`\n\n"
            f"Generated by `python experiments/results.py {args.experiment} ... --study` from {client.tracking_uri}; "
            "srgan-eval's numbers in physical units (PSNR pooled, LPIPS AlexNet per band), train minutes "
            "from the MLflow run's start to end (2 CPU cores, shared).\n\n"
            + study_table(client, args.experiment, args.where)
            + "\n"
        )
        _write(text, args.output)
        return
    text = (
        f"# Results: MLflow experiment `{args.experiment}`\n\n"
        f"Generated by `python experiments/results.py {args.experiment} ...` from {client.tracking_uri}; "
        "validation values are the last logged, on normalised reflectance, PSNR pooled.\n\n"
        + table(client, args.experiment, args.last)
        + "\n"
    )
    _write(text, args.output)


def _write(text: str, output: str) -> None:
    if output == "-":
        print(text)
    else:
        Path(output).write_text(text)
        print(f"written to {output}")


if __name__ == "__main__":
    main()

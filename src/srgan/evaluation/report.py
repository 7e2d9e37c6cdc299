"""What ``srgan-eval`` writes and says: the printed table and summary lines, ``eval.json``, the CSV,
the figures, and the MLflow summary metrics."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

# The few evaluation numbers logged as MLflow metrics (the SR model's, and its gain over bicubic);
# the whole table goes to the run as an artifact (eval.json, eval_table.csv) instead of one
# single-point chart per method and measure. Their keys have no "/": MLflow's run page shows such
# metrics in its last section, after the train/ and val/ curves, and the runs table as columns.
SUMMARY_METRICS = ("psnr", "ssim", "sam_deg", "lpips", "ergas", "hallucination_share")
# Also logged: the spectral-index errors the bands allow (e.g. ndvi_mae, nbr2_mae_water).
INDEX_ERROR = re.compile(r"(ndvi|ndwi|nbr2|ndmi)_mae(_water|_land)?")


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per method, and the gain over bicubic."""
    columns = list(results)
    head = f"{'metric':<34}" + "".join(f"{c:>12}" for c in columns) + f"{'SR-bicubic':>12}"
    lines = [head, "-" * len(head)]
    for row in results["sr"]:
        values = "".join(f"{results[c][row]:>12.5g}" for c in columns)
        gain = results["sr"][row] - results["bicubic"][row]
        lines.append(f"{row:<34}{values}{gain:>+12.4g}")
    return "\n".join(lines)


def area_line(data: Any, split: str, regions: list, border: int, units: Any, results: dict) -> str:
    """Where the numbers come from: the area, its units and how many pixels were measured."""
    # Streamed regions know their sizes from the files' headers: listing them reads no pixels.
    shapes = getattr(regions, "hr_shapes", None) or [tuple(r.hr.shape[-2:]) for r in regions]
    sizes = [f"{h}x{w}" for h, w in shapes]
    if len(sizes) > 3:  # e.g. a benchmark set's images
        size = f"{len(sizes)} images of " + ", ".join(sorted(set(sizes)))
    else:
        size = " + ".join(sizes)
    counted, total = int(results["sr"]["pixels"]), int(results["sr"]["pixels_total"])
    return (
        f"{data.name} / {split} area ({size} HR px, x{data.scale}, border {border} px); "
        f"values in {units!r} units, PSNR pooled, SAM in degrees; "
        f"measured on the {counted} of {total} pixels that hold data ({1 - counted / max(total, 1):.1%} nodata "
        f"left out; LPIPS on {int(results['sr'].get('lpips_pixels', 0))} px of whole nodata-free tiles)"
    )


def uncertainty_lines(uncertainty: dict, std_scale: float | None, calibrate_on: str | None) -> list[str]:
    """The calibration of the sampled spread against HR, raw and (with ``std_scale``) rescaled."""
    u = uncertainty
    lines = [
        f"uncertainty ({u['method']}, {u['samples']} samples): HR inside mean +- std "
        f"{u['coverage_68']:.1%} (nominal 68.3 %), inside +- 1.96 std {u['coverage_95']:.1%} "
        f"(nominal 95 %); corr(spread, |error|) {u['spread_error_corr']:.3f}; RMS spread / RMSE "
        f"{u['spread_rmse_ratio']:.3f}; {u['sampled_s']:.1f} s against "
        f"{u['single_pass_s']:.1f} s for one pass ({u['cost_factor']:.1f}x)"
    ]
    if std_scale is not None:
        lines.append(
            f"with the spread x{std_scale:.3f} (fitted on {calibrate_on}): inside +- std "
            f"{u['recalibrated_coverage_68']:.1%}, inside +- 1.96 std "
            f"{u['recalibrated_coverage_95']:.1%}; calibration error "
            f"{u['calibration_error']:.3f} -> {u['recalibrated_calibration_error']:.3f}"
        )
    return lines


def default_output(model_dir: Path) -> Path:
    """``eval.json`` in the run folder that holds the model, else in the model folder."""
    run_dir = model_dir.parent
    return (run_dir if (run_dir / "resolved_config.yaml").is_file() else model_dir) / "eval.json"


def report_files(output: Path) -> list[Path]:
    """Every file :func:`write_report` may write for ``output``."""
    stem = output.stem
    return [
        output,
        output.with_name(stem + "_table.csv"),
        output.with_suffix(".png"),
        output.with_name(stem + "_reliability.png"),
    ]


def refuse_overwrite(output: Path) -> None:
    """An evaluation's files already there are kept: an error names the first (overwrite=true replaces)."""
    existing = [f for f in report_files(output) if f.exists()]
    if existing:
        raise FileExistsError(
            f"{existing[0]} exists (an earlier evaluation); pass output=<another path>, or overwrite=true to replace it"
        )


def write_table(results: dict[str, dict[str, float]], path: Path) -> Path:
    """Every measure (rows) of every method (columns) and SR's gain over bicubic, as CSV."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["metric", *results, "sr_minus_bicubic"])
        for key in results["sr"]:
            row = [results[m].get(key, math.nan) for m in results]
            out.writerow([key, *(f"{v:.6g}" for v in row), f"{results['sr'][key] - results['bicubic'][key]:.6g}"])
    return path


def write_report(
    output: Path,
    summary: dict[str, Any],
    results: dict[str, dict[str, float]],
    first: dict[str, Any],
    *,
    rgb: list[int],
    bands: list[str],
    figures: bool,
    std_scale: float | None = None,
    calibrate_on: str | None = None,
    benchmark: dict[str, Any] | None = None,
) -> list[Path]:
    """``eval.json`` (``summary`` plus the results and SR's gain over bicubic), its CSV table and,
    with ``figures``, ``eval.png`` and (with a sampled spread) the reliability plot; returns the files."""
    uncertainty = first.get("uncertainty")
    report = {
        **summary,
        "results": results,
        "gain_over_bicubic": {k: v - results["bicubic"][k] for k, v in results["sr"].items()},
    }
    if uncertainty:
        report["uncertainty"] = uncertainty
    if benchmark:
        report["benchmark"] = benchmark
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    files = [output, write_table(results, output.with_name(output.stem + "_table.csv"))]
    if not figures:
        return files
    from srgan.evaluation.figure import figure
    from srgan.evaluation.uncertainty import reliability_plot

    files.append(figure(first, results, rgb, bands, output.with_suffix(".png")))
    if uncertainty:
        title = f"{uncertainty['method']}, {uncertainty['samples']} samples, {summary['dataset']} {summary['split']}"
        curves = {"raw spread": uncertainty["reliability"]}
        if std_scale is not None:
            curves[f"spread x{std_scale:.2f} (fitted on {calibrate_on})"] = uncertainty["recalibrated_reliability"]
        files.append(reliability_plot(curves, output.with_name(output.stem + "_reliability.png"), title))
    return files


def summary_metrics(results: dict[str, dict[str, float]], split: str) -> dict[str, float]:
    """``eval_<split>_<measure>`` of SR and ``eval_<split>_<measure>_gain`` over bicubic, finite only."""
    out = {}
    indices = sorted(k for k in results["sr"] if INDEX_ERROR.fullmatch(k))
    for key in (*SUMMARY_METRICS, *indices):
        sr, bicubic = results["sr"].get(key, math.nan), results["bicubic"].get(key, math.nan)
        out[f"eval_{split}_{key}"] = sr
        out[f"eval_{split}_{key}_gain"] = sr - bicubic
    out[f"eval_{split}_pixels"] = results["sr"]["pixels"]
    return {k: v for k, v in out.items() if math.isfinite(v)}


def benchmark_metrics(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """SR's opensr-test means (``opensr_test_<measure>``) and their gain over bicubic, for MLflow."""
    out = {}
    for key, value in summary.get("sr", {}).items():
        out[f"opensr_test_{key}"] = value["mean"]
        if "bicubic" in summary:
            out[f"opensr_test_{key}_gain"] = value["mean"] - summary["bicubic"][key]["mean"]
    return out


def log_to_mlflow(
    tracking: Any,
    model: Any,
    data: Any,
    split: str,
    results: dict,
    files: list[Path],
    extra: dict[str, float] | None = None,
) -> None:
    """The summary metrics and the files, to the model's training run when ``tracking.uri`` has it,
    else to a new evaluation run."""
    from srgan.tracking import MlflowTracker

    source = model.config.get("source", {})
    tracker = MlflowTracker(
        tracking.uri,
        tracking.experiment_name,
        run_name=f"eval-{model.directory.name}",
        # A new experiment's artifacts go where training's do (mlartifacts/), not under ./mlruns.
        artifact_location=tracking.get("artifact_location"),
    )
    attached = bool(source.get("mlflow_run_id")) and tracker.attach(source["mlflow_run_id"])
    run_id = (
        source["mlflow_run_id"]
        if attached
        else tracker.start({"model": str(model.directory), "dataset": data.name, "split": split})
    )
    # On data other than the model's own (another sensor, a benchmark set), the keys carry the
    # dataset's name, so that they never overwrite the home test area's numbers.
    home = (model.config.get("data") or {}).get("dataset", {}).get("name")
    where = split if home in (None, data.name) else f"{data.name}_{split}"
    finite = summary_metrics(results, where)
    finite.update({f"eval_{where}_{k}": v for k, v in (extra or {}).items() if math.isfinite(v)})
    tracker.log_metrics(finite, step=int(source.get("step") or 0))
    for file in files:
        tracker.log_artifact(file, "evaluation" if where == split else f"evaluation/{data.name}")
    # A training run keeps its own status; a run made for this evaluation is finished here.
    tracker.finish(status=None if attached else "FINISHED")
    print(f"logged to MLflow run {run_id} ({tracker.uri}){'' if attached else ' (a new evaluation run)'}")

"""``srgan-eval``: a trained model against bicubic and nearest upsampling on held-out data.

srgan-eval model=outputs/demo/<run>            # a run folder, its model/ folder, or runs:/<id>/model
srgan-eval model=<run> dataset=raster dataset.path=scene.tif 'dataset.bands=[B04,B03,B02,B08]'

Every value is computed in the data's physical units (reflectance for Sentinel-2, DN / 255 for
8-bit imagery; see :func:`physical_units`), after cropping ``border`` HR pixels: PSNR (pooled over
the area, and per band), SSIM (mean and per band), LPIPS (per band as grey images, and their mean;
real ImageNet weights), spectral angle, ERGAS (and each band's term), and the opensr-test measures
of :mod:`srgan.fidelity`. The table is printed, written to ``eval.json`` with a figure
(``eval.png``: example tiles LR | bicubic | SR | HR | error, and per-band bars), and logged to the
model's training run in MLflow when the tracking store has it (else to a new run).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from srgan.cli import user_errors
from srgan.config import CONF_DIR
from srgan.data.card import check_held_out, dataset_from_card
from srgan.data.datasets import Region
from srgan.data.normalization import LinearScale, dtype_scale
from srgan.devices import pick_device
from srgan.downstream import ThematicAgreement, index_errors
from srgan.engine.checkpoint import ExportedModel, load_model
from srgan.fidelity import clean_degradation, consistency, correctness, ergas, match_histograms, synthesis
from srgan.infer import load_sampler, resolve_model
from srgan.metrics import SRMetrics
from srgan.models.blocks import upsample_image
from srgan.tiling import tiled_super_resolve
from srgan.tracking import MlflowTracker
from srgan.uncertainty import Calibration, SampleSpread, interval_scale, reliability_plot

BASELINES = ("bicubic", "nearest")
METHODS = ("sr", *BASELINES)


def check_compatible(model: ExportedModel, data: Any) -> None:
    """The model must have been trained for this scale and these bands, in this order."""
    if model.scale != data.scale:
        raise ValueError(f"model {model.directory} is x{model.scale} but dataset.scale={data.scale}")
    if list(model.band_names) != list(data.band_names):
        raise ValueError(
            f"model {model.directory} expects bands {model.band_names}, dataset {data.path} gives {data.band_names}"
        )


def physical_units(normalization: Any, dtype: str) -> LinearScale:
    """The map from stored values to physical units: the dataset's own linear scale (reflectance,
    DN / 255), or for statistical normalisations the convention of the data type
    (:func:`srgan.data.normalization.dtype_scale`: uint8 / 255, uint16 / 10000, float as stored;
    other integer types are refused rather than guessed)."""
    if isinstance(normalization, LinearScale):
        return normalization
    return LinearScale(dtype_scale(dtype))


def physical_converter(data: Any):
    """Normalised tensors of ``data`` -> its physical units (:func:`physical_units`), on the CPU."""
    phys = physical_units(data.normalization, data.dtype)

    def to_physical(x: torch.Tensor) -> torch.Tensor:
        return phys.normalize(data.normalization.denormalize(x.float().cpu()))

    return to_physical


class _Lpips:
    """LPIPS per band (each band as a grey image, like the loss without ``rgb_bands``) on 256 px tiles."""

    def __init__(self, net: str, device: torch.device) -> None:
        from srgan.losses.perceptual import LPIPSLoss

        self.loss = LPIPSLoss(num_bands=1, net=net)
        self.device = device

    @torch.no_grad()
    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[list[float], int]:
        """Per-band LPIPS over the tiles that hold no nodata pixel (a network's receptive field
        would see the zero fill), weighted by area; also the pixels those tiles cover."""
        size = 256
        h, w = pred.shape[-2:]
        tiles = []
        for r in range(0, h, size):
            for c in range(0, w, size):
                part = (slice(r, r + size), slice(c, c + size))
                if min(pred[(0, *part)].shape) < 32:  # AlexNet's pooling needs some extent
                    continue
                if valid is not None and not bool(valid[part].all()):
                    continue
                tiles.append(part)
        values = []
        for b in range(pred.shape[0]):
            parts, weights = [], []
            for part in tiles:
                p = pred[(slice(b, b + 1), *part)][None].to(self.device)
                t = target[(slice(b, b + 1), *part)][None].to(self.device)
                parts.append(float(self.loss(p.clamp(0, 1), t.clamp(0, 1))))
                weights.append(p.shape[-2] * p.shape[-1])
            values.append(float(np.average(parts, weights=weights)) if parts else math.nan)
        return values, int(sum(pred[(0, *part)].numel() for part in tiles))


def evaluation_mask(region: Region, scale: int) -> torch.Tensor:
    """HR pixels that are measured: HR holds data and so does the LR pixel that covers them."""
    lr_valid = region.lr_valid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return region.hr_valid.bool() & lr_valid.bool()


def _crop2(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def evaluate_regions(
    model: ExportedModel,
    regions: list[Region],
    data: Any,
    border: int,
    tile: int,
    overlap: int,
    batch_size: int,
    device: torch.device,
    lpips_net: str | None = "alex",
    histogram_match: bool = False,
    sampler: SampleSpread | None = None,
    clusters: int = 6,
    std_scale: float | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """Metrics of the model and of each baseline over normalised LR/HR regions, on the pixels that
    hold data only (:func:`evaluation_mask`; ``pixels`` counts them, ``pixels_total`` the cropped
    area); also the first region's predictions in physical units (for figures). With a ``sampler``,
    ``first`` also holds ``uncertainty``: its calibration against HR, the reliability curve and the
    time per area of a single pass and of the sampled pass; with ``std_scale`` (fitted elsewhere,
    e.g. on the validation split) also the calibration of the spread times that factor
    (``recalibrated_*``)."""
    to_physical = physical_converter(data)

    names = data.band_names
    pooled = {m: SRMetrics(names, border, per_band_ssim=True, masked=True) for m in METHODS}
    weighted: dict[str, dict[str, list[tuple[float, float]]]] = {m: defaultdict(list) for m in METHODS}
    lpips = _Lpips(lpips_net, device) if lpips_net else None
    degrade = clean_degradation(getattr(data, "degradation", model.scale))
    first: dict[str, Any] = {}
    calibration = Calibration() if sampler is not None else None
    recalibrated = Calibration() if sampler is not None and std_scale is not None else None
    timing = {"single_pass_s": 0.0, "sampled_s": 0.0}
    total_pixels = 0
    for region in regions:
        lr_n, hr_n = region.lr, region.hr
        valid = evaluation_mask(region, model.scale)
        lr_b = lr_n[None].to(device)
        started = time.perf_counter()
        sr_n = tiled_super_resolve(model.generator.to(device), lr_n, model.scale, tile, overlap, batch_size, device)
        timing["single_pass_s"] += time.perf_counter() - started
        predictions = {
            "sr": sr_n,
            "bicubic": upsample_image(lr_b, model.scale, "bicubic")[0],
            "nearest": torch.nn.functional.interpolate(lr_b, scale_factor=model.scale, mode="nearest")[0],
        }
        lr, hr = to_physical(lr_n), to_physical(hr_n)
        crop = (slice(None), slice(border, hr.shape[-2] - border), slice(border, hr.shape[-1] - border))
        inside = _crop2(valid, border)
        pixels = float(inside.sum())
        total_pixels += inside.numel()
        if pixels == 0:
            continue
        thematic = ThematicAgreement(hr[crop], names, k=clusters, valid=inside)
        if not first:
            first.update(lr=lr, hr=hr, valid=valid)
        if sampler is not None:
            started = time.perf_counter()
            mean, std = sample_spread(sampler, lr_n, model.scale, tile, overlap, batch_size, device, to_physical)
            timing["sampled_s"] += time.perf_counter() - started
            calibration.update(mean[crop][:, inside], std[crop][:, inside], hr[crop][:, inside])
            if recalibrated is not None:
                recalibrated.update(mean[crop][:, inside], std[crop][:, inside] * std_scale, hr[crop][:, inside])
            first.setdefault("sr_std", std)
        for method, pred_n in predictions.items():
            pred = to_physical(pred_n)
            if histogram_match and method == "sr":  # as srgan-infer histogram_match=true would write it
                pred = match_histograms(pred, lr, reference_valid=region.lr_valid, source_valid=valid)
            pooled[method].update(pred[None], hr[None], valid[None])
            values: dict[str, float] = {}
            total, per_band = ergas(pred[crop], hr[crop], model.scale, inside)
            values["ergas"] = total
            values.update({f"ergas_{n}": v for n, v in zip(names, per_band)})
            lpips_pixels = 0.0
            if lpips is not None:
                per_band, lpips_pixels = lpips(pred[crop], hr[crop], inside)
                values["lpips"] = float(np.mean(per_band))
                values.update({f"lpips_{n}": v for n, v in zip(names, per_band)})
            values.update(index_errors(pred[crop], hr[crop], names, inside))
            values.update(thematic.compare(pred[crop]))
            values.update(consistency(pred, lr, degrade, border, valid, region.lr_valid))
            values.update(synthesis(pred, lr, hr, model.scale, border, valid))
            shares = correctness(pred, lr, hr, model.scale, border, valid=valid)
            counted = float(shares.pop("correctness_pixels"))
            for key, value in values.items():
                weighted[method][key].append((value, float(lpips_pixels) if key.startswith("lpips") else pixels))
            for key, value in shares.items():
                weighted[method][key].append((value, counted))
            weighted[method]["correctness_pixels"].append((counted, 1.0))
            if lpips is not None:
                weighted[method]["lpips_pixels"].append((float(lpips_pixels), 1.0))
            first.setdefault(method, pred)
    if not first:
        raise ValueError(f"{data.path}: the evaluated area has no pixel with data (all nodata after the border)")
    results = {}
    for method in METHODS:
        out = pooled[method].compute()
        for key, pairs in weighted[method].items():
            if key.endswith("_pixels"):  # counts add up over regions
                out[key] = float(sum(v for v, _ in pairs))
                continue
            finite = [(v, w) for v, w in pairs if math.isfinite(v) and w > 0]
            out[key] = float(np.average([v for v, _ in finite], weights=[w for _, w in finite])) if finite else math.nan
        out["pixels"] = float(out["pixels"])
        out["ssim_pixels"] = float(out["ssim_pixels"])
        out["pixels_total"] = float(total_pixels)
        results[method] = out
    if calibration is not None:
        first["uncertainty"] = {
            "method": "noise" if sampler.noise_seeds is not None else "ensemble",
            "samples": sampler.samples,
            **calibration.compute(),
            **timing,
            "cost_factor": timing["sampled_s"] / max(timing["single_pass_s"], 1e-9),
            "reliability": calibration.reliability(),
        }
        if recalibrated is not None:
            first["uncertainty"]["std_scale"] = std_scale
            first["uncertainty"].update({f"recalibrated_{k}": v for k, v in recalibrated.compute().items()})
            first["uncertainty"]["recalibrated_reliability"] = recalibrated.reliability()
    return results, first


def sample_spread(
    sampler: SampleSpread, lr_n: torch.Tensor, scale: int, tile: int, overlap: int, batch_size: int, device, to_physical
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and std of one normalised LR area, in physical units (the map is affine per band,
    so a spread scales by its slope)."""
    bands = lr_n.shape[0]
    out = tiled_super_resolve(
        sampler.to(device), lr_n, scale, tile, overlap, batch_size, device, out_channels=2 * bands
    )
    spread = out[bands:]
    return to_physical(out[:bands]), (to_physical(spread) - to_physical(torch.zeros_like(spread))).abs()


def fit_std_scale(
    sampler: SampleSpread,
    regions: list[Region],
    data: Any,
    model: ExportedModel,
    border: int,
    tile: int,
    overlap: int,
    batch_size: int,
    device,
) -> tuple[float, dict[str, float]]:
    """The factor that puts 68.27 % of HR values inside mean +- factor x std on these (held-out,
    non-test) areas: the 68.27 % quantile of |error| / std there (matching the RMS spread to the
    RMSE instead undershoots the central levels when errors are heavy-tailed, as SR errors are);
    also the raw calibration there. Pixels without data are left out."""
    to_physical = physical_converter(data)

    cal, errors, spreads = Calibration(), [], []
    for region in regions:
        mean, std = sample_spread(sampler, region.lr, model.scale, tile, overlap, batch_size, device, to_physical)
        hr = to_physical(region.hr)
        crop = (slice(None), slice(border, hr.shape[-2] - border), slice(border, hr.shape[-1] - border))
        inside = _crop2(evaluation_mask(region, model.scale), border)
        m, sd, t = mean[crop][:, inside], std[crop][:, inside], hr[crop][:, inside]
        cal.update(m, sd, t)
        errors.append((t - m).abs().flatten())
        spreads.append(sd.flatten())
    if not cal.compute()["mean_std"] > 0:
        raise ValueError("the samples have no spread on the calibration split: no scale factor can be fitted")
    return interval_scale(torch.cat(errors), torch.cat(spreads)), cal.compute()


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


def figure(first: dict[str, torch.Tensor], results: dict, rgb: list[int], bands: list[str], path: Path) -> Path:
    """Example tiles (LR | bicubic | SR | HR | |SR - HR|) and per-band PSNR / SSIM bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hr = first["hr"]
    valid = first.get("valid", torch.ones(hr.shape[-2:], dtype=torch.bool))
    size = min(128, hr.shape[-2], hr.shape[-1])
    # The three tiles with the most HR detail (where SR matters); tiles with nodata rank last.
    detail = (hr - first["bicubic"]).abs().mean(0) * valid
    detail = torch.nn.functional.avg_pool2d(detail[None, None], size, size)[0, 0]
    full = torch.nn.functional.avg_pool2d(valid.float()[None, None], size, size)[0, 0]
    order = torch.argsort((detail * (full >= 0.999) + detail * 1e-6).flatten(), descending=True)[:3].tolist()
    spots = [(i // detail.shape[1] * size, i % detail.shape[1] * size) for i in order]
    lo, hi = np.percentile(hr[rgb][:, valid].numpy(), [1, 99])  # the stretch of the pixels with data

    def show(x: torch.Tensor) -> np.ndarray:
        return np.clip((x[rgb].permute(1, 2, 0).numpy() - lo) / max(hi - lo, 1e-6), 0, 1)

    scale = hr.shape[-1] // first["lr"].shape[-1]
    columns = ["LR", "bicubic", "SR", "HR", "|SR - HR|"]
    fig, axes = plt.subplots(len(spots) + 1, 5, figsize=(15, 3 * len(spots) + 3.5), squeeze=False)
    for row, (r, c) in enumerate(spots):
        lr_tile = first["lr"][:, r // scale : (r + size) // scale, c // scale : (c + size) // scale]
        tiles = [
            torch.nn.functional.interpolate(lr_tile[None], scale_factor=scale, mode="nearest")[0],
            first["bicubic"][:, r : r + size, c : c + size],
            first["sr"][:, r : r + size, c : c + size],
            hr[:, r : r + size, c : c + size],
        ]
        for col, t in enumerate(tiles):
            axes[row, col].imshow(show(t))
        err = (tiles[2] - tiles[3]).abs().mean(0).numpy()
        axes[row, 4].imshow(err, cmap="magma", vmin=0, vmax=max(float(np.percentile(err, 99)), 1e-6))
        for col, name in enumerate(columns):
            axes[row, col].set_title(name if row == 0 else "")
            axes[row, col].axis("off")
    for ax in axes[-1]:
        ax.axis("off")
    bars = fig.add_subplot(len(spots) + 1, 2, 2 * len(spots) + 1)
    ssim = fig.add_subplot(len(spots) + 1, 2, 2 * len(spots) + 2)
    x = np.arange(len(bands))
    for k, method in enumerate(METHODS):
        bars.bar(x + (k - 1) * 0.27, [results[method][f"psnr_{b}"] for b in bands], 0.27, label=method)
        ssim.bar(x + (k - 1) * 0.27, [results[method][f"ssim_{b}"] for b in bands], 0.27, label=method)
    for ax, name in ((bars, "PSNR dB"), (ssim, "SSIM")):
        ax.set_xticks(x, bands)
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    lows = [min(results[m][f"psnr_{b}"] for m in METHODS) for b in bands]
    bars.set_ylim(min(lows) - 2, None)
    ssim.set_ylim(min(min(results[m][f"ssim_{b}"] for m in METHODS) for b in bands) - 0.05, 1.0)
    fig.subplots_adjust(left=0.04, right=0.98, top=0.95, bottom=0.05, hspace=0.3, wspace=0.08)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def default_output(model_dir: Path) -> Path:
    run_dir = model_dir.parent
    return (run_dir if (run_dir / "resolved_config.yaml").is_file() else model_dir) / "eval.json"


# The few evaluation numbers logged as MLflow metrics (the SR model's, and its gain over bicubic);
# the whole table goes to the run as an artifact (eval.json, eval_table.csv) instead of one
# single-point chart per method and measure. Their keys have no "/": MLflow's run page shows such
# metrics in its last section, after the train/ and val/ curves, and the runs table as columns.
SUMMARY_METRICS = ("psnr", "ssim", "sam_deg", "lpips", "ergas", "hallucination")


def write_table(results: dict[str, dict[str, float]], path: Path) -> Path:
    """Every measure (rows) of every method (columns) and SR's gain over bicubic, as CSV."""
    import csv

    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["metric", *results, "sr_minus_bicubic"])
        for key in results["sr"]:
            row = [results[m].get(key, math.nan) for m in results]
            out.writerow([key, *(f"{v:.6g}" for v in row), f"{results['sr'][key] - results['bicubic'][key]:.6g}"])
    return path


def summary_metrics(results: dict[str, dict[str, float]], split: str) -> dict[str, float]:
    """``eval_<split>_<measure>`` of SR and ``eval_<split>_<measure>_gain`` over bicubic, finite only."""
    out = {}
    for key in SUMMARY_METRICS:
        sr, bicubic = results["sr"].get(key, math.nan), results["bicubic"].get(key, math.nan)
        out[f"eval_{split}_{key}"] = sr
        out[f"eval_{split}_{key}_gain"] = sr - bicubic
    out[f"eval_{split}_pixels"] = results["sr"]["pixels"]
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _log_to_mlflow(
    cfg: DictConfig,
    model: ExportedModel,
    data: Any,
    results: dict,
    files: list[Path],
    extra: dict[str, float] | None = None,
) -> None:
    source = model.config.get("source", {})
    tracker = MlflowTracker(
        cfg.tracking.uri,
        cfg.tracking.experiment_name,
        run_name=f"eval-{model.directory.name}",
        # A new experiment's artifacts go where training's do (mlartifacts/), not under ./mlruns.
        artifact_location=cfg.tracking.get("artifact_location"),
    )
    attached = bool(source.get("mlflow_run_id")) and tracker.attach(source["mlflow_run_id"])
    run_id = (
        source["mlflow_run_id"]
        if attached
        else tracker.start({"model": str(model.directory), "dataset": data.name, "split": cfg.split})
    )
    finite = summary_metrics(results, cfg.split)
    finite.update({f"eval_{cfg.split}_{k}": v for k, v in (extra or {}).items() if math.isfinite(v)})
    tracker.log_metrics(finite, step=int(source.get("step") or 0))
    for file in files:
        tracker.log_artifact(file, "evaluation")
    # A training run keeps its own status; a run made for this evaluation is finished here.
    tracker.finish(status=None if attached else "FINISHED")
    print(f"logged to MLflow run {run_id} ({tracker.uri}){'' if attached else ' (a new evaluation run)'}")


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
@user_errors("srgan-eval")
def main(cfg: DictConfig) -> None:
    device = pick_device(cfg.device)
    model = load_model(resolve_model(cfg.model, cfg.tracking.uri))
    if cfg.get("dataset") is None:
        # The data and split the model was trained on, as its card records them.
        data = dataset_from_card(model)
        print(f"evaluating on the data the model was trained on: {data.path} ({data.name}, as its model card records)")
    else:
        data = instantiate(cfg.dataset, _convert_="all")
    check_compatible(model, data)
    if cfg.allow_train_overlap:
        print(f"allow_train_overlap=true: the {cfg.split} area is NOT checked against the training area")
    else:
        check_held_out(model, data, cfg.split)
    # The model sees data normalised as in its training (e.g. its z-score statistics), whatever
    # normalisation the evaluation's dataset config names.
    if model.normalization.to_config() != data.normalization.to_config():
        print(f"using the model's normalisation {model.normalization!r} instead of {data.normalization!r}")
        data.normalization = model.normalization
    if hasattr(data, "lr_normalization"):  # real LR (paired_folder): normalised as the model's input was
        data.lr_normalization = model.lr_normalization
    u = cfg.uncertainty
    sampler = load_sampler(model, u, cfg.tracking.uri)
    std_scale = None
    if sampler is not None and u.get("calibrate_on"):
        if u.calibrate_on == cfg.split:
            raise ValueError(f"uncertainty.calibrate_on={u.calibrate_on} is the evaluated split: fit it on another")
        held = data.regions(u.calibrate_on)
        std_scale, raw = fit_std_scale(
            sampler,
            held,
            data,
            model,
            cfg.border,
            cfg.tile,
            cfg.overlap,
            cfg.batch_size,
            device,
        )
        print(
            f"spread scale fitted on the {u.calibrate_on} split: x{std_scale:.3f} (raw coverage there: "
            f"{raw['coverage_68']:.1%} at 68.3 %, {raw['coverage_95']:.1%} at 95 %)"
        )
    regions = data.regions(cfg.split)
    results, first = evaluate_regions(
        model,
        regions,
        data,
        cfg.border,
        cfg.tile,
        cfg.overlap,
        cfg.batch_size,
        device,
        cfg.lpips,
        cfg.histogram_match,
        sampler,
        cfg.clusters,
        std_scale,
    )
    size = " + ".join(f"{r.hr.shape[-2]}x{r.hr.shape[-1]}" for r in regions)
    counted, total = int(results["sr"]["pixels"]), int(results["sr"]["pixels_total"])
    print(
        f"\n{data.name} / {cfg.split} area ({size} HR px, x{data.scale}, border {cfg.border} px); "
        f"values in {physical_units(data.normalization, data.dtype)!r} units, PSNR pooled, SAM in degrees; "
        f"measured on the {counted} of {total} pixels that hold data ({1 - counted / max(total, 1):.1%} nodata "
        f"left out; LPIPS on {int(results['sr'].get('lpips_pixels', 0))} px of whole nodata-free tiles)\n"
    )
    print(format_table(results))
    uncertainty = first.get("uncertainty")
    if uncertainty:
        print(
            f"\nuncertainty ({uncertainty['method']}, {uncertainty['samples']} samples): HR inside mean +- std "
            f"{uncertainty['coverage_68']:.1%} (nominal 68.3 %), inside +- 1.96 std {uncertainty['coverage_95']:.1%} "
            f"(nominal 95 %); corr(spread, |error|) {uncertainty['spread_error_corr']:.3f}; RMS spread / RMSE "
            f"{uncertainty['spread_rmse_ratio']:.3f}; {uncertainty['sampled_s']:.1f} s against "
            f"{uncertainty['single_pass_s']:.1f} s for one pass ({uncertainty['cost_factor']:.1f}x)"
        )
        if std_scale is not None:
            print(
                f"with the spread x{std_scale:.3f} (fitted on {u.calibrate_on}): inside +- std "
                f"{uncertainty['recalibrated_coverage_68']:.1%}, inside +- 1.96 std "
                f"{uncertainty['recalibrated_coverage_95']:.1%}; calibration error "
                f"{uncertainty['calibration_error']:.3f} -> {uncertainty['recalibrated_calibration_error']:.3f}"
            )
    output = Path(cfg.output) if cfg.output else default_output(model.directory)
    report = {
        "model": str(model.directory),
        "dataset": data.name,
        "path": str(data.path),
        "split": cfg.split,
        "border": cfg.border,
        "histogram_match": cfg.histogram_match,
        "scale": data.scale,
        "bands": data.band_names,
        "results": results,
        "gain_over_bicubic": {k: v - results["bicubic"][k] for k, v in results["sr"].items()},
    }
    if uncertainty:
        report["uncertainty"] = uncertainty
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    files = [output, write_table(results, output.with_name(output.stem + "_table.csv"))]
    if cfg.figure:
        files.append(figure(first, results, data.rgb_indices, data.band_names, output.with_suffix(".png")))
        if uncertainty:
            title = f"{uncertainty['method']}, {uncertainty['samples']} samples, {data.name} {cfg.split}"
            plot = output.with_name(output.stem + "_reliability.png")
            curves = {"raw spread": uncertainty["reliability"]}
            if std_scale is not None:
                curves[f"spread x{std_scale:.2f} (fitted on {u.calibrate_on})"] = uncertainty[
                    "recalibrated_reliability"
                ]
            files.append(reliability_plot(curves, plot, title))
    print(f"\nwritten to {', '.join(str(f) for f in files)}")
    if cfg.log_to_mlflow:
        extra = {f"uncertainty_{k}": float(v) for k, v in (uncertainty or {}).items() if isinstance(v, (int, float))}
        _log_to_mlflow(cfg, model, data, results, files, extra)


if __name__ == "__main__":
    main()

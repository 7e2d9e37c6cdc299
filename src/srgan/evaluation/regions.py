"""A trained model against bicubic and nearest upsampling over normalised LR / HR regions.

Every value is computed in the data's physical units (reflectance for Sentinel-2, DN / 255 for
8-bit imagery; see :func:`physical_units`), after cropping ``border`` HR pixels, on the pixels that
hold data (:func:`evaluation_mask`): PSNR (pooled over the area, and per band), SSIM (mean and per
band), LPIPS (per band as grey images, and their mean), spectral angle, ERGAS (and each band's
term), spectral-index and thematic-map errors (:mod:`.downstream`) and the opensr-test measures of
:mod:`.fidelity`. With a sampler (:mod:`.uncertainty`) also the calibration of its spread.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from srgan.data.datasets import Region
from srgan.data.normalization import LinearScale, dtype_scale
from srgan.engine.checkpoint import ExportedModel
from srgan.evaluation.benchmark import OpenSRTestRun
from srgan.evaluation.downstream import ThematicAgreement, index_errors, water_mask
from srgan.evaluation.fidelity import clean_degradation, consistency, correctness, ergas, match_histograms, synthesis
from srgan.evaluation.metrics import BandLpips, SRMetrics
from srgan.evaluation.uncertainty import Calibration, SampleSpread, interval_scale
from srgan.models.blocks import upsample_image
from srgan.tiling import tiled_super_resolve
from srgan.tta import self_ensemble

BASELINES = ("bicubic", "nearest")
METHODS = ("sr", *BASELINES)


def check_compatible(model: ExportedModel, data: Any, band_map: dict[str, str] | None = None) -> None:
    """The model must have been trained for this scale and these bands, in this order; ``band_map``
    (the dataset's band name -> the model's) names bands that are the same under other names."""
    from srgan.config import check_band_map

    if model.scale != data.scale:
        raise ValueError(f"model {model.directory} is x{model.scale} but dataset.scale={data.scale}")
    ours = list(data.band_names)
    renamed = check_band_map(dict(band_map or {}), ours, list(model.band_names), "band_map", "the model's")
    if renamed != list(model.band_names):
        mapped = f" (as {renamed} through band_map)" if band_map else ""
        raise ValueError(
            f"model {model.directory} expects bands {model.band_names}, dataset {data.path} gives {ours}{mapped}; "
            "band_map={<dataset band>: <model band>} names the same bands under other names"
        )


def physical_units(normalization: Any, dtype: str) -> LinearScale:
    """The map from stored values to physical units: the dataset's own linear scale (reflectance,
    DN / 255), or for statistical normalisations the convention of the data type
    (:func:`srgan.data.normalization.dtype_scale`: uint8 / 255, uint16 / 10000, float as stored;
    other integer types are refused rather than guessed)."""
    if isinstance(normalization, LinearScale):
        return normalization
    return LinearScale(dtype_scale(dtype))


def dataset_units(data: Any) -> LinearScale:
    """The physical units of ``data``: those of its own normalisation, kept in ``data.units`` by
    ``srgan-eval`` before the model's normalisation replaces it (8-bit data fed to a model trained
    on uint16 reflectance is still measured in DN / 255)."""
    units = getattr(data, "units", None)
    return units if units is not None else physical_units(data.normalization, data.dtype)


def physical_converter(data: Any):
    """Normalised tensors of ``data`` -> its physical units (:func:`physical_units`), on the CPU."""
    phys = dataset_units(data)

    def to_physical(x: torch.Tensor) -> torch.Tensor:
        return phys.normalize(data.normalization.denormalize(x.float().cpu()))

    return to_physical


def evaluation_mask(region: Region, scale: int) -> torch.Tensor:
    """HR pixels that are measured: HR holds data and so does the LR pixel that covers them."""
    lr_valid = region.lr_valid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return region.hr_valid.bool() & lr_valid.bool()


def _crop2(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def _border_crop(hr: torch.Tensor, border: int) -> tuple[slice, slice, slice]:
    return (slice(None), slice(border, hr.shape[-2] - border), slice(border, hr.shape[-1] - border))


class _SpreadTally:
    """The sampler's calibration against HR over the regions (and of its spread times ``std_scale``),
    and the time of the sampled passes against the single ones."""

    def __init__(self, sampler: SampleSpread, std_scale: float | None) -> None:
        self.sampler, self.std_scale = sampler, std_scale
        self.calibration = Calibration()
        self.recalibrated = Calibration() if std_scale is not None else None
        self.timing = {"single_pass_s": 0.0, "sampled_s": 0.0}

    def update(self, mean: torch.Tensor, std: torch.Tensor, hr: torch.Tensor, crop: tuple, inside: torch.Tensor):
        m, sd, t = mean[crop][:, inside], std[crop][:, inside], hr[crop][:, inside]
        self.calibration.update(m, sd, t)
        if self.recalibrated is not None:
            self.recalibrated.update(m, sd * self.std_scale, t)

    def report(self) -> dict[str, Any]:
        timing = self.timing
        out = {
            "method": self.sampler.method,
            "samples": self.sampler.samples,
            **self.calibration.compute(),
            **timing,
            "cost_factor": timing["sampled_s"] / max(timing["single_pass_s"], 1e-9),
            "reliability": self.calibration.reliability(),
        }
        if self.recalibrated is not None:
            out["std_scale"] = self.std_scale
            out.update({f"recalibrated_{k}": v for k, v in self.recalibrated.compute().items()})
            out["recalibrated_reliability"] = self.recalibrated.reliability()
        return out


def _predictions(
    model: ExportedModel, lr_n: torch.Tensor, tile: int, overlap: int, batch_size: int, device, tta: str = "none"
) -> tuple[dict[str, torch.Tensor], float]:
    """SR (tiled; with ``tta=d4`` the D4 self-ensemble) and the two baselines of one normalised LR
    area; also the seconds of the SR pass."""
    lr_b = lr_n[None].to(device)
    started = time.perf_counter()
    network = self_ensemble(model.generator, tta).to(device)
    sr_n = tiled_super_resolve(network, lr_n, model.scale, tile, overlap, batch_size, device)
    seconds = time.perf_counter() - started
    predictions = {
        "sr": sr_n,
        "bicubic": upsample_image(lr_b, model.scale, "bicubic")[0],
        "nearest": torch.nn.functional.interpolate(lr_b, scale_factor=model.scale, mode="nearest")[0],
    }
    return predictions, seconds


def _measure(pred, lr, hr, region, valid, crop, inside, *, scale, border, names, lpips, thematic, degrade):
    """One method's per-region measures: ``(values, correctness shares, their pixels, LPIPS pixels)``."""
    values: dict[str, float] = {}
    total, per_band = ergas(pred[crop], hr[crop], scale, inside)
    values["ergas"] = total
    values.update({f"ergas_{n}": v for n, v in zip(names, per_band)})
    lpips_pixels = 0.0
    if lpips is not None:
        per_band, lpips_pixels = lpips(pred[crop], hr[crop], inside)
        values["lpips"] = float(np.mean(per_band))
        values.update({f"lpips_{n}": v for n, v in zip(names, per_band)})
    values.update(index_errors(pred[crop], hr[crop], names, inside, water_mask(hr[crop], names)))
    values.update(thematic.compare(pred[crop]))
    values.update(consistency(pred, lr, degrade, border, valid, region.lr_valid))
    values.update(synthesis(pred, lr, hr, scale, border, valid))
    shares = correctness(pred, lr, hr, scale, border, valid=valid)
    counted = float(shares.pop("correctness_pixels"))
    return values, shares, counted, lpips_pixels


def _benchmark_image(benchmark: OpenSRTestRun, method, lr, pred, hr, valid, image: str) -> None:
    """One region as one image of the benchmark; one with pixels without data is left out (counted)."""
    if bool(valid.all()):
        benchmark.update(method, lr, pred, hr, image)
    else:
        benchmark.left_out_image(image)


def _weigh(out, values, shares, counted: float, pixels: float, lpips_pixels: float | None) -> None:
    """A region's measures with the weights they are averaged with over regions: its pixels (LPIPS:
    its LPIPS pixels; correctness shares: its counted pixels); the counts themselves add up."""
    for key, value in values.items():
        out[key].append((value, float(lpips_pixels or 0.0) if key.startswith("lpips") else pixels))
    for key, value in shares.items():
        out[key].append((value, counted))
    out["correctness_pixels"].append((counted, 1.0))
    if lpips_pixels is not None:
        out["lpips_pixels"].append((float(lpips_pixels), 1.0))


def _pool(pooled: SRMetrics, weighted: dict[str, list[tuple[float, float]]], total_pixels: int) -> dict[str, float]:
    """One method's measures over all regions: pooled metrics, area-weighted means, summed counts."""
    out = pooled.compute()
    for key, pairs in weighted.items():
        if key.endswith("_pixels"):  # counts add up over regions
            out[key] = float(sum(v for v, _ in pairs))
            continue
        finite = [(v, w) for v, w in pairs if math.isfinite(v) and w > 0]
        out[key] = float(np.average([v for v, _ in finite], weights=[w for _, w in finite])) if finite else math.nan
    out["pixels"] = float(out["pixels"])
    out["ssim_pixels"] = float(out["ssim_pixels"])
    out["pixels_total"] = float(total_pixels)
    return out


def evaluate_regions(
    model: ExportedModel,
    regions: list[Region],
    data: Any,
    *,
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
    benchmark: OpenSRTestRun | None = None,
    tta: str = "none",
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Metrics of the model and of each baseline over normalised LR/HR regions, on the pixels that
    hold data only (:func:`evaluation_mask`; ``pixels`` counts them, ``pixels_total`` the cropped
    area); also the first region's predictions in physical units (for figures). With a ``sampler``,
    ``first`` also holds ``uncertainty``: its calibration against HR, the reliability curve and the
    time per area of a single pass and of the sampled pass; with ``std_scale`` (fitted elsewhere,
    e.g. on the validation split) also the calibration of the spread times that factor
    (``recalibrated_*``). With a ``benchmark`` (:mod:`.benchmark`), every region is also one image
    of the opensr-test package's measures, whole (opensr-test crops its own border). With
    ``tta=d4`` "sr" is the model's D4 self-ensemble (:mod:`srgan.tta`; the sampler is given as it
    should run: :meth:`SampleSpread.with_tta`)."""
    to_physical = physical_converter(data)
    names, scale = data.band_names, model.scale
    pooled = {m: SRMetrics(names, border, per_band_ssim=True, masked=True) for m in METHODS}
    weighted: dict[str, dict[str, list[tuple[float, float]]]] = {m: defaultdict(list) for m in METHODS}
    lpips = BandLpips(lpips_net, device) if lpips_net else None
    degrade = clean_degradation(getattr(data, "degradation", scale))
    first: dict[str, Any] = {}
    tally = _SpreadTally(sampler, std_scale) if sampler is not None else None
    total_pixels = 0
    for index, region in enumerate(regions):
        valid = evaluation_mask(region, scale)
        predictions, single_pass_s = _predictions(model, region.lr, tile, overlap, batch_size, device, tta)
        if tally is not None:
            tally.timing["single_pass_s"] += single_pass_s
        lr, hr = to_physical(region.lr), to_physical(region.hr)
        crop, inside = _border_crop(hr, border), _crop2(valid, border)
        pixels = float(inside.sum())
        total_pixels += inside.numel()
        if pixels == 0:
            continue
        thematic = ThematicAgreement(hr[crop], names, k=clusters, valid=inside)
        if not first:
            first.update(lr=lr, hr=hr, valid=valid)
        if tally is not None:
            started = time.perf_counter()
            mean, std = sample_spread(sampler, region.lr, scale, tile, overlap, batch_size, device, to_physical)
            tally.timing["sampled_s"] += time.perf_counter() - started
            tally.update(mean, std, hr, crop, inside)
            first.setdefault("sr_std", std)
        for method, pred_n in predictions.items():
            pred = to_physical(pred_n)
            if histogram_match and method == "sr":  # as srgan-infer histogram_match=true would write it
                pred = match_histograms(pred, lr, reference_valid=region.lr_valid, source_valid=valid)
            pooled[method].update(pred[None], hr[None], valid[None])
            if benchmark is not None and benchmark.wants(method):
                _benchmark_image(benchmark, method, lr, pred, hr, valid, region.source or f"{data.path} region {index}")
            context = {"scale": scale, "border": border, "names": names, "lpips": lpips, "degrade": degrade}
            values, shares, counted, lpips_pixels = _measure(
                pred, lr, hr, region, valid, crop, inside, thematic=thematic, **context
            )
            _weigh(weighted[method], values, shares, counted, pixels, lpips_pixels if lpips is not None else None)
            first.setdefault(method, pred)
    if not first:
        raise ValueError(f"{data.path}: the evaluated area has no pixel with data (all nodata after the border)")
    results = {method: _pool(pooled[method], weighted[method], total_pixels) for method in METHODS}
    if tally is not None:
        first["uncertainty"] = tally.report()
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
    *,
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
        crop = _border_crop(hr, border)
        inside = _crop2(evaluation_mask(region, model.scale), border)
        m, sd, t = mean[crop][:, inside], std[crop][:, inside], hr[crop][:, inside]
        cal.update(m, sd, t)
        errors.append((t - m).abs().flatten())
        spreads.append(sd.flatten())
    if not cal.compute()["mean_std"] > 0:
        raise ValueError("the samples have no spread on the calibration split: no scale factor can be fitted")
    return interval_scale(torch.cat(errors), torch.cat(spreads)), cal.compute()

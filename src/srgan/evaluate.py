"""``srgan-eval``: a trained model against bicubic and nearest upsampling on held-out data.

srgan-eval model=outputs/demo/<run>            # a run folder, its model/ folder, or runs:/<id>/model
srgan-eval model=<run> dataset=raster dataset.path=scene.tif 'dataset.bands=[B04,B03,B02,B08]'
srgan-eval model=<run> dataset=opensr_test dataset.name=naip dataset.root=<folder> benchmark=opensr_test

This module only assembles: the measures are :mod:`srgan.evaluation` (what is computed, in which
units, on which pixels: :mod:`srgan.evaluation.regions`). The table is printed, written to
``eval.json`` with a figure (``eval.png``: example tiles LR | bicubic | SR | HR | error, and per-band
bars), and logged to the model's training run in MLflow when the tracking store has it (else to a
new run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srgan.cli import user_errors
from srgan.config import CONF_DIR, EvalConfig, validate_entry_config
from srgan.data.card import check_held_out, dataset_from_card
from srgan.data.normalization import LinearScale
from srgan.devices import pick_device
from srgan.engine.checkpoint import ExportedModel, load_model
from srgan.evaluation import report
from srgan.evaluation.benchmark import load_benchmark
from srgan.evaluation.regions import (
    check_compatible,
    dataset_units,
    evaluate_regions,
    fit_std_scale,
    physical_units,
)
from srgan.evaluation.uncertainty import SampleSpread, load_sampler
from srgan.model_source import resolve_model
from srgan.tta import check_tta


def evaluation_data(cfg: DictConfig, options: EvalConfig, model: ExportedModel) -> Any:
    """The dataset to evaluate on, checked against the model, normalised as the model's input was."""
    if cfg.get("dataset") is None:
        # The data and split the model was trained on, as its card records them.
        data = dataset_from_card(model)
        print(f"evaluating on the data the model was trained on: {data.path} ({data.name}, as its model card records)")
    else:
        data = instantiate(cfg.dataset, _convert_="all")
    check_compatible(model, data, options.band_map)
    if options.band_map:
        print(f"band_map: the dataset's bands {list(data.band_names)} are the model's {list(model.band_names)}")
    if options.allow_train_overlap:
        print(f"allow_train_overlap=true: the {options.split} area is NOT checked against the training area")
    else:
        check_held_out(model, data, options.split)
    # The model sees data normalised as in its training (e.g. its z-score statistics), whatever
    # normalisation the evaluation's dataset config names; it is measured in the data's own units
    # where those are known (see own_units).
    data.units = own_units(cfg, data)
    if options.normalize_as == "dataset":  # another sensor: its own units, e.g. NAIP's DN / 255
        print(f"normalize_as=dataset: the model sees {data.normalization!r} (trained on {model.normalization!r})")
        return data
    if model.normalization.to_config() != data.normalization.to_config():
        print(f"using the model's normalisation {model.normalization!r} instead of {data.normalization!r}")
        data.normalization = model.normalization
    if hasattr(data, "lr_normalization"):  # real LR (paired_folder): normalised as the model's input was
        data.lr_normalization = model.lr_normalization
    return data


def own_units(cfg: DictConfig, data: Any) -> LinearScale | None:
    """The physical units of ``data`` when its config or its integer data type says what they are:
    a declared linear scale (reflectance, uint8) or the convention of uint8 / uint16. None for float
    values under ``normalization=auto`` (or a statistical one): nothing says what they are in, and
    they are measured in the units of the model's normalisation, as the model reads them (an
    opensr-test set stored as float DN is then reflectance for a model trained on DN / 10000)."""
    target = str(OmegaConf.select(cfg, "dataset.normalization._target_", default="") or "")
    declared = isinstance(data.normalization, LinearScale) and not target.endswith("ByDataType")
    if declared or not str(data.dtype).startswith("float"):
        return physical_units(data.normalization, data.dtype)
    return None


def calibrated_scale(
    sampler: SampleSpread | None, calibrate_on: str | None, options: EvalConfig, data: Any, model: ExportedModel, device
) -> float | None:
    """The spread factor fitted on the ``calibrate_on`` split (None: no sampler, or no split asked)."""
    if sampler is None or not calibrate_on:
        return None
    if calibrate_on == options.split:
        raise ValueError(f"uncertainty.calibrate_on={calibrate_on} is the evaluated split: fit it on another")
    tiling = {"tile": options.tile, "overlap": options.overlap, "batch_size": options.batch_size}
    std_scale, raw = fit_std_scale(
        sampler, data.regions(calibrate_on), data, model, border=options.border, device=device, **tiling
    )
    print(
        f"spread scale fitted on the {calibrate_on} split: x{std_scale:.3f} (raw coverage there: "
        f"{raw['coverage_68']:.1%} at 68.3 %, {raw['coverage_95']:.1%} at 95 %)"
    )
    return std_scale


# eval.yaml's config groups, and ``tta`` (checked by srgan.tta.check_tta: EvalConfig does not hold it
# yet); every other top-level key is one of EvalConfig's.
GROUPS = ("dataset", "uncertainty", "benchmark", "tracking", "tta")


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
@user_errors("srgan-eval")
def main(cfg: DictConfig) -> None:
    options: EvalConfig = validate_entry_config(EvalConfig, cfg, GROUPS)
    tta = check_tta(cfg.get("tta"), "tta")
    device = pick_device(options.device)
    model = load_model(resolve_model(options.model, cfg.tracking.uri))
    output = Path(options.output) if options.output else report.default_output(model.directory)
    if not options.overwrite:  # before any work, so that nothing already written is lost
        report.refuse_overwrite(output)
    data = evaluation_data(cfg, options, model)
    if tta == "d4":
        print("tta=d4: SR is the model's mean over the 8 flips and quarter turns (8 passes per tile)")
    sampler = load_sampler(model, cfg.uncertainty, cfg.tracking.uri)
    sampler = sampler.with_tta(tta) if sampler is not None else None
    calibrate_on = cfg.uncertainty.get("calibrate_on")
    std_scale = calibrated_scale(sampler, calibrate_on, options, data, model, device)
    benchmark = load_benchmark(cfg.benchmark, data.rgb_indices)
    regions = data.regions(options.split)
    results, first = evaluate_regions(
        model,
        regions,
        data,
        border=options.border,
        tile=options.tile,
        overlap=options.overlap,
        batch_size=options.batch_size,
        device=device,
        lpips_net=options.lpips,
        histogram_match=options.histogram_match,
        sampler=sampler,
        clusters=options.clusters,
        std_scale=std_scale,
        benchmark=benchmark,
        tta=tta,
    )
    units = dataset_units(data)
    print("\n" + report.area_line(data, options.split, regions, options.border, units, results) + "\n")
    print(report.format_table(results))
    if benchmark is not None:
        print("\n" + benchmark.table())
    uncertainty = first.get("uncertainty")
    if uncertainty:
        print("\n" + "\n".join(report.uncertainty_lines(uncertainty, std_scale, calibrate_on)))
    summary = {
        "model": str(model.directory),
        "dataset": data.name,
        "path": str(data.path),
        "split": options.split,
        "border": options.border,
        "histogram_match": options.histogram_match,
        "tta": tta,
        "scale": data.scale,
        "bands": data.band_names,
    }
    files = report.write_report(
        output,
        summary,
        results,
        first,
        rgb=data.rgb_indices,
        bands=data.band_names,
        figures=options.figure,
        std_scale=std_scale,
        calibrate_on=calibrate_on,
        benchmark=benchmark.record() if benchmark is not None else None,
    )
    print(f"\nwritten to {', '.join(str(f) for f in files)}")
    if options.log_to_mlflow:
        extra = {f"uncertainty_{k}": float(v) for k, v in (uncertainty or {}).items() if isinstance(v, (int, float))}
        if benchmark is not None:
            extra.update(report.benchmark_metrics(benchmark.summary()))
        report.log_to_mlflow(cfg.tracking, model, data, options.split, results, files, extra)


if __name__ == "__main__":
    main()

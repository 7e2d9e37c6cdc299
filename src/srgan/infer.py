"""``srgan-infer``: super-resolve a GeoTIFF of any size with a trained model, keeping its georeference.

    srgan-infer model=outputs/demo/<run> input=scene_lr.tif output=scene_sr.tif
    srgan-infer model=runs:/<run id>/model input=... output=... bf16=true cog=true

The scene is streamed: one row of LR tiles is read (a rasterio window) at a time, super-resolved in
batches, blended into a rolling buffer of output rows, and every row that no later tile touches is
written out (a rasterio window) and forgotten. Memory is bounded by the tile size, the batch and the
scene *width*, never its height. The output has the input's CRS, a geotransform with 1/scale of the
pixel size, the input's band names, nodata value and units (inverse normalisation, rounded and
clipped to the input's data type), as a tiled, DEFLATE-compressed GeoTIFF (or a COG). LR nodata
pixels stay nodata in SR (their scale x scale blocks). A pixel is nodata where every band is at the
nodata value or the file's mask band says so (GDAL's per-dataset rule: NIR = 0 over water is data);
``nodata=<value>`` overrides the file's tag, ``nodata=none`` ignores it. The file appears only once
complete. ``tta=d4`` super-resolves every batch of tiles as the mean over the eight flips and
quarter turns (:mod:`srgan.tta`, eight passes) and tags the output ``tta=d4``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from omegaconf import DictConfig
from rasterio.enums import MaskFlags
from rasterio.windows import Window
from tqdm.auto import tqdm

from srgan.cli import user_errors
from srgan.config import CONF_DIR, InferConfig, validate_entry_config
from srgan.data.rasters import RasterError, effective_nodata, parse_nodata, select_bands, to_dtype, valid_pixels
from srgan.devices import pick_device
from srgan.engine.checkpoint import ExportedModel, load_model
from srgan.evaluation.fidelity import quantile_maps
from srgan.evaluation.uncertainty import SampleSpread, load_sampler
from srgan.model_source import resolve_model
from srgan.tiling import RowBlender, run_tiles, tile_boxes
from srgan.tta import D4_SIZE, check_tta, self_ensemble

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOptions:
    """How :func:`super_resolve_file` runs; the defaults are ``conf/infer.yaml``'s (a test keeps them equal).

    ``bands``: of the input, by name or 1-based index (None: the model's band names). ``tile``,
    ``overlap`` (LR pixels) and ``batch_size`` (tiles per forward pass). ``std_path``: where a sampled
    spread goes (None: ``<output>_std.tif``), multiplied by ``std_scale``. ``nodata``: None (the
    input's tag and mask band), a number (overrides the tag) or ``"none"``. GDAL's block cache (by
    default 5 % of the RAM) would otherwise hold written blocks and grow with the scene: it is capped
    at ``gdal_cache_mb``. ``tta``: ``none`` or ``d4`` (each tile the mean of the generator over the
    eight D4 transforms; with a noise or ensemble ``sampler``, each of its samples; a ``tta`` sampler
    already is that mean).
    """

    bands: list[str | int] | None = None
    tile: int = 128
    overlap: int = 16
    batch_size: int = 4
    device: str = "auto"
    overwrite: bool = False
    bf16: bool = False
    channels_last: bool = True
    cog: bool = False
    histogram_match: bool = False
    progress: bool = True
    std_path: str | Path | None = None
    std_scale: float = 1.0
    nodata: float | str | None = None
    gdal_cache_mb: int = 256
    tta: str = "none"


@dataclass
class _Output:
    """What the output files look like: the GeoTIFF profile, the nodata rule, where they are written."""

    profile: dict[str, Any]
    indices: list[int]
    nodata_setting: Any
    # An integer input whose missing pixels come from a mask band (no nodata value) gets one too.
    write_mask: bool
    work: Path
    target: Path  # the staging file (histogram matching) or the final one
    std_profile: dict[str, Any] | None


def super_resolve_file(
    model_path: str | Path | ExportedModel,
    input_path: str | Path,
    output_path: str | Path,
    options: InferOptions | None = None,
    *,
    sampler: SampleSpread | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Stream ``input_path`` through the model into ``output_path``; returns the paths and timing.

    ``options`` (or its fields as keywords: ``tile=64, overlap=8``): :class:`InferOptions`. With a
    ``sampler`` (:mod:`srgan.evaluation.uncertainty`) the output holds the per-pixel sample mean and
    ``options.std_path`` the per-band standard deviation in the output's units times ``std_scale``
    (float32, NaN where the input has no data).
    """
    opts = replace(options or InferOptions(), **settings)
    check_tta(opts.tta, "tta")
    nodata_setting = parse_nodata(opts.nodata, "nodata")
    input_path, output_path = Path(input_path), Path(output_path)
    if sampler is not None and opts.histogram_match:
        raise ValueError(
            "histogram_match=true with an uncertainty method is not supported: the spread would no "
            "longer describe the matched values"
        )
    std_path = None
    if sampler is not None:
        std_path = Path(opts.std_path) if opts.std_path else output_path.with_name(output_path.stem + "_std.tif")
    for path in (output_path, std_path):
        if path is not None and path.exists() and not opts.overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    model = model_path if isinstance(model_path, ExportedModel) else load_model(model_path)
    if not input_path.is_file():
        raise RasterError(f"{input_path}: no such file")
    dev = pick_device(opts.device)
    if sampler is not None:
        sampler = sampler.with_tta(opts.tta)
    generator = (sampler if sampler is not None else self_ensemble(model.generator, opts.tta)).to(dev)
    if opts.channels_last:
        generator.to(memory_format=torch.channels_last)
    with rasterio.Env(GDAL_CACHEMAX=opts.gdal_cache_mb * 2**20, GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(input_path) as src:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            plan = _plan_output(src, input_path, output_path, model, opts, nodata_setting, sampler is not None)
            try:
                started = time.perf_counter()
                tiles, lr_samples = _stream(src, input_path, plan, generator, model, opts, sampler, dev)
                seconds = time.perf_counter() - started
                _finish(plan, model, opts, lr_samples, output_path, std_path)
            finally:
                shutil.rmtree(plan.work, ignore_errors=True)
    return {
        "output": output_path,
        "std_output": std_path,
        "tiles": tiles,
        "seconds": seconds,
        "tiles_per_s": tiles / seconds,
    }


def _plan_output(
    src: Any,
    input_path: Path,
    output_path: Path,
    model: ExportedModel,
    opts: InferOptions,
    nodata_setting: Any,
    spread: bool,
) -> _Output:
    """The bands to read, the output's profile and nodata, and the work folder beside the output."""
    chosen = select_bands(input_path, src, list(opts.bands) if opts.bands else model.band_names)
    indices = chosen.indices
    if len(indices) != len(model.band_names):
        raise RasterError(
            f"{input_path}: {len(indices)} bands selected, the model was trained on {len(model.band_names)} "
            f"({', '.join(model.band_names)})"
        )
    dtype, s = chosen.dtype, model.scale
    nodata = effective_nodata(src, indices, nodata_setting)
    if nodata is None and np.dtype(dtype).kind == "f":
        # NaN is a float raster's nodata whether or not the file says so: it stays NaN in SR.
        nodata = float("nan")
    write_mask = nodata is None and any(
        MaskFlags.per_dataset in src.mask_flag_enums[i - 1] or MaskFlags.alpha in src.mask_flag_enums[i - 1]
        for i in indices
    )
    profile = dict(
        driver="GTiff",
        width=src.width * s,
        height=src.height * s,
        count=len(indices),
        dtype=dtype,
        crs=src.crs,
        transform=src.transform @ Affine.scale(1 / s),
        nodata=nodata,
        compress="deflate",
        predictor=3 if np.dtype(dtype).kind == "f" else 2,
        # bands, not colours: a 4-band uint8 file would otherwise be RGBA, its NIR "alpha"
        photometric="MINISBLACK",
        tiled=True,
        blockxsize=256,
        blockysize=256,
        BIGTIFF="IF_SAFER",
        # GDAL compresses blocks on every core (a single-threaded DEFLATE is what limits
        # the scene rate once the generator runs on a GPU: bench/speed.py --kinds scene).
        NUM_THREADS="ALL_CPUS",
    )
    work = make_work_dir(output_path)
    # Histogram matching needs the whole SR distribution first, so it goes through a float staging
    # file; otherwise each finished strip is converted and written once.
    target = work / ("sr.tif" if opts.histogram_match else "final.tif")
    std_profile = {**profile, "dtype": "float32", "nodata": float("nan"), "predictor": 3} if spread else None
    return _Output(profile, indices, nodata_setting, write_mask, work, target, std_profile)


def _read_strip(
    src: Any, plan: _Output, model: ExportedModel, row: int, rows: int
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """One strip of LR rows: the raw float values, the pixels that hold data, and the normalised
    network input (zero where there is no data)."""
    window = Window(0, row, src.width, rows)
    raw = src.read(plan.indices, window=window)
    valid = valid_pixels(src, plan.indices, raw, window, plan.nodata_setting)
    strip = raw.astype(np.float32)
    lr = torch.from_numpy(np.asarray(model.lr_normalization.normalize(strip), dtype=np.float32))
    lr[:, ~torch.from_numpy(valid)] = 0.0
    return strip, valid, lr


def _stream(
    src: Any,
    input_path: Path,
    plan: _Output,
    generator: torch.nn.Module,
    model: ExportedModel,
    opts: InferOptions,
    sampler: SampleSpread | None,
    dev: torch.device,
) -> tuple[int, list[np.ndarray]]:
    """Tile row by tile row: read a strip, super-resolve its tiles, blend them, write the rows no
    later tile touches. Returns the number of tiles and (histogram matching) the LR value samples."""
    height, width, s = src.height, src.width, model.scale
    boxes = tile_boxes(height, width, opts.tile, opts.overlap)
    by_row: dict[int, list[tuple[int, int, int, int]]] = {}
    for box in boxes:
        by_row.setdefault(box[0], []).append(box)
    rows = sorted(by_row)
    lr_samples: list[np.ndarray] = []
    bar = tqdm(total=len(boxes), unit="tile", disable=not opts.progress, desc=input_path.name, mininterval=1.0)
    started, done = time.perf_counter(), 0
    bands = len(plan.indices)
    # The blend buffers live on the model's device: on a GPU only finished strips travel.
    blender = RowBlender(bands * (2 if sampler else 1), height, width, s, opts.overlap, dev)
    with contextlib.ExitStack() as files:
        dst = files.enter_context(rasterio.open(plan.target, "w", **_target_profile(plan, opts)))
        std_dst = (
            files.enter_context(rasterio.open(plan.work / "std.tif", "w", **plan.std_profile)) if sampler else None
        )
        for i, r in enumerate(rows):
            th = by_row[r][0][2]
            strip, valid, lr = _read_strip(src, plan, model, r, th)
            if opts.histogram_match:  # about a million LR values per band, each LR row once
                fresh = rows[i + 1] - r if i + 1 < len(rows) else th
                values = strip[:, :fresh][:, valid[:fresh]]
                lr_samples.append(values[:, :: max(1, height * width // 1_000_000)])
            blender.mark(r * s, np.repeat(np.repeat(~valid, s, 0), s, 1))

            def read(box, lr=lr):
                _, c, h, w = box
                return lr[:, :h, c : c + w]

            tiles = run_tiles(generator, read, by_row[r], opts.batch_size, dev, opts.bf16, opts.channels_last)
            for box, sr in tiles:
                blender.add(box, sr)
                done += 1
                bar.update(1)
                bar.set_postfix(tiles_per_s=f"{done / (time.perf_counter() - started):.1f}", refresh=False)
            # Rows above the next tile row are final: write and drop them.
            base = blender.base
            finished = blender.take(rows[i + 1] * s if i + 1 < len(rows) else height * s)
            if finished is not None:
                _write_rows(dst, std_dst, plan, model, opts, base, *finished, bands=bands)
        _describe(dst, std_dst, model, opts, sampler)
    bar.close()
    return len(boxes), lr_samples


def _target_profile(plan: _Output, opts: InferOptions) -> dict[str, Any]:
    if opts.histogram_match:
        return {**plan.profile, "dtype": "float32", "nodata": None}
    return plan.profile


def _write_rows(
    dst: Any,
    std_dst: Any,
    plan: _Output,
    model: ExportedModel,
    opts: InferOptions,
    base: int,
    blended: torch.Tensor,
    missing: np.ndarray,
    *,
    bands: int,
) -> None:
    """Finished HR rows ``base ..`` to the output (and the spread to its own file), in the output's
    units with its nodata, or as float for the histogram-matching staging file."""
    n = missing.shape[0]
    window = Window(0, base, plan.profile["width"], n)
    out = blended.cpu().numpy()
    if std_dst is not None:
        out, spread = out[:bands], out[bands:]
        std_dst.write(_spread_to_output(spread * opts.std_scale, missing, model), window=window)
    if opts.histogram_match:
        out[:, missing] = np.nan
    else:
        out = _to_output(out, missing, plan.profile, model, None)
    dst.write(out, window=window)
    if plan.write_mask and not opts.histogram_match:
        dst.write_mask((~missing).astype(np.uint8) * 255, window=window)


def _tta_tags(opts: InferOptions, sampler: SampleSpread | None) -> dict[str, str]:
    """``tta=d4`` (and the passes per sample) when the written values are D4 self-ensembles: with
    ``tta=d4``, or as the mean of ``uncertainty=tta``'s samples; no tag for single passes."""
    if opts.tta == "d4" or (sampler is not None and sampler.method == "tta"):
        return {"tta": "d4", "tta_passes": str(D4_SIZE)}
    return {}


def _describe(dst: Any, std_dst: Any, model: ExportedModel, opts: InferOptions, sampler: SampleSpread | None) -> None:
    """Band descriptions and TTA tags (and the spread file's uncertainty tags)."""
    tta = _tta_tags(opts, sampler)
    if not opts.histogram_match:  # else the final file is written (and described) by _finalise
        dst.descriptions = tuple(model.band_names)
    dst.update_tags(**tta)
    if std_dst is not None:
        std_dst.descriptions = tuple(f"{b}_std" for b in model.band_names)
        std_dst.update_tags(
            uncertainty_method=sampler.method,
            uncertainty_samples=str(sampler.samples),
            uncertainty_std_scale=str(opts.std_scale),
            # with tta=d4 a noise or ensemble sample is itself an 8-pass mean
            uncertainty_sample_tta="d4" if sampler.d4 else "none",
            **tta,
        )


def _finish(
    plan: _Output,
    model: ExportedModel,
    opts: InferOptions,
    lr_samples: list[np.ndarray],
    output_path: Path,
    std_path: Path | None,
) -> None:
    """Histogram matching (from the staging file), the COG copy, then the files into place."""
    work = plan.work
    if opts.histogram_match:
        maps = quantile_maps(_sample_sr(plan.target, model), np.concatenate(lr_samples, axis=1))
        _finalise(plan.target, work / "final.tif", plan.profile, model, maps, _tta_tags(opts, None))
    if opts.cog:
        rasterio.shutil.copy(work / "final.tif", work / "cog.tif", driver="COG", compress="DEFLATE")
        os.replace(work / "cog.tif", work / "final.tif")
    os.replace(work / "final.tif", output_path)
    if std_path is not None:
        os.replace(work / "std.tif", std_path)


WORK_OWNER = "owner.json"
# A work folder without an owner file (written before srgan recorded owners) counts as stale after this.
UNOWNED_STALE_S = 3600.0


def _owner_alive(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's (a shared disk): not ours to judge
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The pid may have been reused by an unrelated process since: compare its start time.
    return _process_start(pid) == owner.get("started")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def remove_stale_work_dirs(output_path: Path) -> list[Path]:
    """Remove the partial-output folders (``.<name>.<random>/``) that a killed ``srgan-infer`` left
    beside ``output_path``: those whose owner process is gone. Returns what was removed."""
    removed = []
    for candidate in output_path.parent.glob(f".{glob.escape(output_path.name)}.*"):
        if not candidate.is_dir() or candidate.is_symlink():
            continue
        try:
            owner = json.loads((candidate / WORK_OWNER).read_text())
            stale = not isinstance(owner, dict) or not _owner_alive(owner)
        except FileNotFoundError:
            stale = time.time() - candidate.stat().st_mtime > UNOWNED_STALE_S
        except (OSError, ValueError):
            stale = True
        if stale:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def make_work_dir(output_path: Path) -> Path:
    """A hidden folder beside the output for the partial files, recording its owner process so that
    a later run can tell a killed run's leftovers from a concurrent run's work."""
    for stale in remove_stale_work_dirs(output_path):
        log.warning("removed %s, left behind by an interrupted srgan-infer", stale)
    work = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.", dir=output_path.parent))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}
    (work / WORK_OWNER).write_text(json.dumps(owner))
    return work


def _sample_sr(stage: Path, model: ExportedModel) -> np.ndarray:
    """About a million SR values per band (every n-th valid pixel), in the input's units."""
    parts = []
    with rasterio.open(stage) as src:
        step = max(1, src.width * src.height // 1_000_000)
        for _, window in src.block_windows(1):
            data = src.read(window=window)
            data = np.asarray(model.normalization.denormalize(data))
            ok = np.isfinite(data).all(0)
            parts.append(data[:, ok][:, ::step])
    return np.concatenate(parts, axis=1)


def _spread_to_output(spread: np.ndarray, missing: np.ndarray, model: ExportedModel) -> np.ndarray:
    """A per-band spread in network units -> the output's units (the normalisation is affine per
    band, so a spread scales by its slope), float32, NaN where ``missing``."""
    zero = np.asarray(model.normalization.denormalize(np.zeros_like(spread[:, :1, :1])))
    out = np.abs(np.asarray(model.normalization.denormalize(spread)) - zero).astype(np.float32)
    out[:, missing] = np.nan
    return out


def _to_output(
    data: np.ndarray, missing: np.ndarray, profile: dict, model: ExportedModel, maps: list | None
) -> np.ndarray:
    """Float SR in network units -> the input's units and data type, nodata where ``missing``."""
    missing = missing | ~np.isfinite(data).all(0)
    values = np.asarray(model.normalization.denormalize(np.nan_to_num(data)))
    if maps is not None:
        values = np.stack([np.interp(v, sq, lq) for v, (sq, lq) in zip(values, maps)])
    out = to_dtype(values, profile["dtype"])
    if profile["nodata"] is not None:
        out[:, missing] = profile["nodata"]
    return out


def _finalise(
    stage: Path, target: Path, profile: dict, model: ExportedModel, maps: list | None, tags: dict[str, str]
) -> None:
    """The float staging file -> the output (histogram-matched), window by window, with ``tags``."""
    with rasterio.open(stage) as src, rasterio.open(target, "w", **profile) as dst:
        for _, window in src.block_windows(1):
            data = src.read(window=window)
            dst.write(_to_output(data, np.zeros(data.shape[1:], bool), profile, model, maps), window=window)
        dst.descriptions = tuple(model.band_names)
        dst.update_tags(**tags)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@hydra.main(config_path=str(CONF_DIR), config_name="infer", version_base="1.3")
@user_errors("srgan-infer")
def main(cfg: DictConfig) -> None:
    # SIGTERM (a scheduler's time limit, `kill`) unwinds like Ctrl-C: partial files are removed.
    signal.signal(signal.SIGTERM, _terminate)
    # ``tta`` is checked here (InferConfig does not hold it yet): passed over like a group, then named.
    options: InferConfig = validate_entry_config(InferConfig, cfg, ("uncertainty", "tta"))
    tta = check_tta(cfg.get("tta"), "tta")
    model = load_model(resolve_model(options.model, options.tracking_uri))
    sampler = load_sampler(model, cfg.uncertainty, options.tracking_uri)
    shared = {f.name: getattr(options, f.name) for f in fields(InferOptions) if hasattr(options, f.name)}
    shared["std_path"], shared["std_scale"] = options.std_output, float(cfg.uncertainty.std_scale)
    shared["tta"] = tta
    result = super_resolve_file(model, options.input, options.output, InferOptions(**shared), sampler=sampler)
    spread = f", per-band std -> {result['std_output']} ({sampler.samples} samples)" if sampler else ""
    ensemble = ", tta=d4 (mean of 8 flips/rotations)" if tta == "d4" else ""
    print(
        f"super-resolved {options.input} -> {result['output']}{spread}{ensemble} "
        f"({result['tiles']} tiles in {result['seconds']:.1f} s, {result['tiles_per_s']:.1f} tiles/s)"
    )


if __name__ == "__main__":
    main()

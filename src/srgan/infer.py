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
complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
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
from srgan.config import CONF_DIR
from srgan.data.rasters import RasterError, effective_nodata, parse_nodata, select_bands, to_dtype, valid_pixels
from srgan.devices import pick_device
from srgan.engine.checkpoint import ExportedModel, load_model
from srgan.fidelity import quantile_maps
from srgan.tiling import _edges, blend_window, run_tiles, tile_boxes
from srgan.uncertainty import SampleSpread, build_sampler

log = logging.getLogger(__name__)


def resolve_model(model: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """A model folder, a run folder, or an MLflow artifact URI (``runs:/<id>/model``, ``models:/<name>/<v>``,
    ``mlflow-artifacts:/...``) downloaded to a temporary folder."""
    text = str(model)
    if not Path(text).exists() and re.match(r"^[a-zA-Z][\w+.-]+:/", text):
        import mlflow

        target = tempfile.mkdtemp(prefix="srgan-model-")
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=target, tracking_uri=tracking_uri))
    return Path(text)


def super_resolve_file(
    model_path: str | Path | ExportedModel,
    input_path: str | Path,
    output_path: str | Path,
    bands: list[str | int] | None = None,
    tile: int = 128,
    overlap: int = 16,
    batch_size: int = 4,
    device: str = "auto",
    overwrite: bool = False,
    bf16: bool = False,
    cog: bool = False,
    histogram_match: bool = False,
    progress: bool = True,
    gdal_cache_mb: int = 256,
    channels_last: bool = True,
    sampler: SampleSpread | None = None,
    std_path: str | Path | None = None,
    std_scale: float = 1.0,
    nodata: float | str | None = None,
) -> dict[str, Any]:
    """Stream ``input_path`` through the model into ``output_path``; returns the path and timing.

    With a ``sampler`` (:mod:`srgan.uncertainty`) the output holds the per-pixel sample mean and
    ``std_path`` (default ``<output>_std.tif``) the per-band standard deviation in the output's units
    times ``std_scale`` (float32, NaN where the input has no data).

    ``nodata``: None (the input's tag and mask band), a number (overrides the tag) or ``"none"``.

    GDAL's block cache (by default 5 % of the RAM) would otherwise hold written blocks and grow
    with the scene: it is capped at ``gdal_cache_mb``."""
    nodata_setting = parse_nodata(nodata, "nodata")
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb * 2**20, GDAL_TIFF_INTERNAL_MASK=True):
        input_path, output_path = Path(input_path), Path(output_path)
        if sampler is not None and histogram_match:
            raise ValueError(
                "histogram_match=true with an uncertainty method is not supported: the spread would no "
                "longer describe the matched values"
            )
        std_path = (
            (Path(std_path) if std_path else output_path.with_name(output_path.stem + "_std.tif")) if sampler else None
        )
        for path in (output_path, std_path):
            if path is not None and path.exists() and not overwrite:
                raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
        model = model_path if isinstance(model_path, ExportedModel) else load_model(model_path)
        if not input_path.is_file():
            raise RasterError(f"{input_path}: no such file")
        dev = pick_device(device)
        generator = (sampler if sampler is not None else model.generator).to(dev)
        s = model.scale
        if channels_last:
            generator.to(memory_format=torch.channels_last)
        with rasterio.open(input_path) as src:
            chosen = select_bands(input_path, src, list(bands) if bands else model.band_names)
            indices = chosen.indices
            if len(indices) != len(model.band_names):
                raise RasterError(
                    f"{input_path}: {len(indices)} bands selected, the model was trained on {len(model.band_names)} "
                    f"({', '.join(model.band_names)})"
                )
            height, width, dtype = src.height, src.width, chosen.dtype
            nodata = effective_nodata(src, indices, nodata_setting)
            if nodata is None and np.dtype(dtype).kind == "f":
                # NaN is a float raster's nodata whether or not the file says so: it stays NaN in SR.
                nodata = float("nan")
            # An integer input whose missing pixels come from a mask band (no nodata value) gets one too.
            write_mask = nodata is None and any(
                MaskFlags.per_dataset in src.mask_flag_enums[i - 1] or MaskFlags.alpha in src.mask_flag_enums[i - 1]
                for i in indices
            )
            profile = dict(
                driver="GTiff",
                width=width * s,
                height=height * s,
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
            boxes = tile_boxes(height, width, tile, overlap)
            by_row: dict[int, list[tuple[int, int, int, int]]] = {}
            for box in boxes:
                by_row.setdefault(box[0], []).append(box)
            rows = sorted(by_row)
            output_path.parent.mkdir(parents=True, exist_ok=True)
            work = make_work_dir(output_path)
            stage = work / "sr.tif"
            lr_samples: list[np.ndarray] = []
            try:
                started, done = time.perf_counter(), 0
                bar = tqdm(total=len(boxes), unit="tile", disable=not progress, desc=input_path.name, mininterval=1.0)
                # Histogram matching needs the whole SR distribution first, so it goes through a float
                # staging file; otherwise each finished strip is converted and written once.
                if histogram_match:
                    target, target_profile = stage, {**profile, "dtype": "float32", "nodata": None}
                else:
                    target, target_profile = work / "final.tif", profile
                windows: dict[tuple, torch.Tensor] = {}
                bands = len(indices)
                std_profile = {**profile, "dtype": "float32", "nodata": float("nan"), "predictor": 3}
                with contextlib.ExitStack() as files:
                    dst = files.enter_context(rasterio.open(target, "w", **target_profile))
                    std_dst = (
                        files.enter_context(rasterio.open(work / "std.tif", "w", **std_profile)) if sampler else None
                    )
                    # The blend buffers live on the model's device: on a GPU only finished strips travel.
                    acc = torch.zeros(bands * (2 if sampler else 1), 0, width * s, device=dev)
                    wsum = torch.zeros(1, 0, width * s, device=dev)
                    mask_rows = np.zeros((0, width * s), dtype=bool)
                    base = 0  # first HR row held in the buffers
                    for i, r in enumerate(rows):
                        th = by_row[r][0][2]
                        raw = src.read(indices, window=Window(0, r, width, th))
                        valid = valid_pixels(src, indices, raw, Window(0, r, width, th), nodata_setting)
                        strip = raw.astype(np.float32)
                        if histogram_match:  # about a million LR values per band, each LR row once
                            fresh = rows[i + 1] - r if i + 1 < len(rows) else th
                            values = strip[:, :fresh][:, valid[:fresh]]
                            lr_samples.append(values[:, :: max(1, height * width // 1_000_000)])
                        lr = torch.from_numpy(np.asarray(model.lr_normalization.normalize(strip), dtype=np.float32))
                        lr[:, ~torch.from_numpy(valid)] = 0.0
                        end = (r + th) * s
                        grow = end - (base + acc.shape[1])
                        if grow > 0:
                            acc = torch.cat([acc, acc.new_zeros(acc.shape[0], grow, width * s)], 1)
                            wsum = torch.cat([wsum, wsum.new_zeros(1, grow, width * s)], 1)
                            mask_rows = np.concatenate([mask_rows, np.zeros((grow, width * s), dtype=bool)])
                        invalid = np.repeat(np.repeat(~valid, s, 0), s, 1)
                        mask_rows[r * s - base : end - base] |= invalid

                        def read(box, lr=lr, r=r):
                            _, c, h, w = box
                            return lr[:, :h, c : c + w]

                        for box, sr in run_tiles(generator, read, by_row[r], batch_size, dev, bf16, channels_last):
                            _, c, h, w = box
                            key = (h, w, _edges(box, height, width))
                            if key not in windows:
                                windows[key] = blend_window(h * s, w * s, overlap * s, key[2]).to(dev)
                            window = windows[key]
                            top = r * s - base
                            acc[:, top : top + h * s, c * s : (c + w) * s] += sr * window
                            wsum[:, top : top + h * s, c * s : (c + w) * s] += window
                            done += 1
                            bar.update(1)
                            bar.set_postfix(tiles_per_s=f"{done / (time.perf_counter() - started):.1f}", refresh=False)
                        # Rows above the next tile row are final: write and drop them.
                        final = rows[i + 1] * s if i + 1 < len(rows) else height * s
                        n = final - base
                        if n > 0:
                            out = (acc[:, :n] / wsum[:, :n]).cpu().numpy()
                            if std_dst is not None:
                                out, spread = out[:bands], out[bands:]
                                std_dst.write(
                                    _spread_to_output(spread * std_scale, mask_rows[:n], model),
                                    window=Window(0, base, width * s, n),
                                )
                            if histogram_match:
                                out[:, mask_rows[:n]] = np.nan
                            else:
                                out = _to_output(out, mask_rows[:n], profile, model, None)
                            dst.write(out, window=Window(0, base, width * s, n))
                            if write_mask and not histogram_match:
                                mask = (~mask_rows[:n]).astype(np.uint8) * 255
                                dst.write_mask(mask, window=Window(0, base, width * s, n))
                            acc, wsum, mask_rows = acc[:, n:], wsum[:, n:], mask_rows[n:]
                            base = final
                    if not histogram_match:
                        dst.descriptions = tuple(model.band_names)
                    if std_dst is not None:
                        std_dst.descriptions = tuple(f"{b}_std" for b in model.band_names)
                        std_dst.update_tags(
                            uncertainty_method="noise" if sampler.noise_seeds is not None else "ensemble",
                            uncertainty_samples=str(sampler.samples),
                            uncertainty_std_scale=str(std_scale),
                        )
                bar.close()
                seconds = time.perf_counter() - started
                if histogram_match:
                    maps = quantile_maps(_sample_sr(stage, model), np.concatenate(lr_samples, axis=1))
                    _finalise(stage, work / "final.tif", profile, model, maps)
                if cog:
                    rasterio.shutil.copy(work / "final.tif", work / "cog.tif", driver="COG", compress="DEFLATE")
                    os.replace(work / "cog.tif", work / "final.tif")
                os.replace(work / "final.tif", output_path)
                if std_path is not None:
                    os.replace(work / "std.tif", std_path)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return {
            "output": output_path,
            "std_output": std_path,
            "tiles": len(boxes),
            "seconds": seconds,
            "tiles_per_s": len(boxes) / seconds,
        }


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


def _finalise(stage: Path, target: Path, profile: dict, model: ExportedModel, maps: list | None) -> None:
    """The float staging file -> the output (histogram-matched), window by window."""
    with rasterio.open(stage) as src, rasterio.open(target, "w", **profile) as dst:
        for _, window in src.block_windows(1):
            data = src.read(window=window)
            dst.write(_to_output(data, np.zeros(data.shape[1:], bool), profile, model, maps), window=window)
        dst.descriptions = tuple(model.band_names)


def load_sampler(model: ExportedModel, node: Any, tracking_uri: str | None) -> SampleSpread | None:
    """The sampler an ``uncertainty`` config node asks for (None for method none); members are
    model folders, run folders or MLflow URIs, resolved like ``model``."""
    return build_sampler(
        model,
        node.method,
        node.samples or 0,
        node.seed,
        list(node.members),
        lambda member: load_model(resolve_model(member, tracking_uri)),
    )


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@hydra.main(config_path=str(CONF_DIR), config_name="infer", version_base="1.3")
@user_errors("srgan-infer")
def main(cfg: DictConfig) -> None:
    # SIGTERM (a scheduler's time limit, `kill`) unwinds like Ctrl-C: partial files are removed.
    signal.signal(signal.SIGTERM, _terminate)
    model = load_model(resolve_model(cfg.model, cfg.get("tracking_uri")))
    u = cfg.uncertainty
    sampler = load_sampler(model, u, cfg.get("tracking_uri"))
    result = super_resolve_file(
        model,
        cfg.input,
        cfg.output,
        list(cfg.bands) if cfg.bands else None,
        cfg.tile,
        cfg.overlap,
        cfg.batch_size,
        cfg.device,
        cfg.overwrite,
        cfg.bf16,
        cfg.cog,
        cfg.histogram_match,
        cfg.progress,
        channels_last=cfg.channels_last,
        sampler=sampler,
        std_path=cfg.get("std_output"),
        std_scale=float(u.get("std_scale", 1.0)),
        nodata=cfg.get("nodata"),
    )
    spread = f", per-band std -> {result['std_output']} ({sampler.samples} samples)" if sampler else ""
    print(
        f"super-resolved {cfg.input} -> {result['output']}{spread} "
        f"({result['tiles']} tiles in {result['seconds']:.1f} s, {result['tiles_per_s']:.1f} tiles/s)"
    )


if __name__ == "__main__":
    main()

"""Small TACO files in SEN2NAIP's layout, written into a test's tmp_path: each sample a group of an
``lr`` and an ``hr`` GeoTIFF, with a split per sample.

- TACO v2 (``.tacozip``) by tacotoolbox itself (``Sample``, ``Tortilla``, ``Taco``, ``create``).
- TACO v1 (``.taco``, SEN2NAIP's first distribution) by :func:`write_taco_v1` below: no installed
  package writes v1 any more, so this writes the layout that ``tacoreader.v1`` reads (and that
  pytortilla 0.5 / tacotoolbox 0.13 wrote): a 200-byte header (magic, footer offset and length,
  data partitions; a TACO adds its collection's offset and length at bytes 26-42), the members'
  bytes, a Parquet footer of ``tortilla:*`` columns, then the collection JSON. A group sample is
  itself such a file (magic ``#y``) stored as a member with file format ``TORTILLA``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from affine import Affine
from rasterio.crs import CRS

HEADER = 200


@dataclass
class PairSample:
    """One sample: its id, split (as the file names it: train / validation / test, or None), the
    LR and HR arrays ``(bands, rows, cols)``, band descriptions (None: none) and its place."""

    id: str
    split: str | None
    lr: np.ndarray
    hr: np.ndarray
    names: list[str] | None = None
    origin: tuple[float, float] = (435740.0, 4179460.0)
    # Member ids written under another id in this sample only (e.g. {"hr": "mask"}).
    rename: dict[str, str] = field(default_factory=dict)
    # Member bytes changed in this sample only, by member id (e.g. {"hr": truncate}).
    alter: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)


def geotiff_bytes(data: np.ndarray, pixel: float, origin: tuple[float, float], names: list[str] | None) -> bytes:
    """A GeoTIFF in memory (UTM 18N, north up, ``pixel`` metres), written as srgan writes bands."""
    bands, rows, cols = data.shape
    profile = dict(
        driver="GTiff",
        width=cols,
        height=rows,
        count=bands,
        dtype=data.dtype,
        crs=CRS.from_epsg(32618),
        transform=Affine(pixel, 0, origin[0], 0, -pixel, origin[1]),
        photometric="MINISBLACK",
    )
    with rasterio.MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
            if names:
                dst.descriptions = tuple(names)
        return memory.read()


def pair_samples(
    splits: list[str | None],
    size: int = 16,
    scale: int = 4,
    bands: int = 4,
    seed: int = 0,
    names: list[str] | None = None,
    level: dict[str, int] | None = None,
) -> list[PairSample]:
    """One sample per entry of ``splits``, 1 km apart: random uint16 HR around ``level[split]``
    (default 2000) and LR its block mean, truncated, so that LR and HR are aligned pixel for pixel."""
    rng = np.random.default_rng(seed)
    out = []
    for i, split in enumerate(splits):
        base = (level or {}).get(split or "", 2000)
        hr = (base + rng.integers(0, 1000, (bands, size * scale, size * scale))).astype(np.uint16)
        lr = hr.reshape(bands, size, scale, size, scale).mean(axis=(2, 4)).astype(np.uint16)
        out.append(PairSample(f"ROI_{i:04d}", split, lr, hr, names, (435740.0 + 1000.0 * i, 4179460.0)))
    return out


def _members(sample: PairSample, lr_id: str = "lr", hr_id: str = "hr") -> dict[str, bytes]:
    members = {
        lr_id: geotiff_bytes(sample.lr, 10.0, sample.origin, sample.names),
        hr_id: geotiff_bytes(sample.hr, 2.5, sample.origin, sample.names),
    }
    members = {key: sample.alter.get(key, lambda b: b)(data) for key, data in members.items()}
    return {sample.rename.get(key, key): data for key, data in members.items()}


def vrt_bytes(source: str, bands: int = 4, size: int = 64) -> bytes:
    """A GDAL VRT (XML) of ``size`` x ``size`` px whose bands are those of ``source``, any GDAL path."""
    band = (
        '<VRTRasterBand dataType="UInt16" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">'
        "{source}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
    )
    body = "".join(band.format(b=b, source=source) for b in range(1, bands + 1))
    return (
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32618</SRS>'
        f"<GeoTransform>435740, 2.5, 0, 4179460, 0, -2.5</GeoTransform>{body}</VRTDataset>"
    ).encode()


def overwrite_member(gdal_path: str, data: bytes) -> None:
    """Put ``data`` where a member's GDAL path points (a ``/vsisubfile/`` range, padded with spaces
    to its length, or a plain file), as if the container had been changed after it was opened."""
    ranged = re.fullmatch(r"/vsisubfile/(\d+)_(\d+),(.+)", gdal_path)
    if ranged is None:
        Path(gdal_path).write_bytes(data)
        return
    offset, length, file = int(ranged[1]), int(ranged[2]), ranged[3]
    assert len(data) <= length, "the new bytes must fit in the member's range"
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(data.ljust(length, b" "))


def set_v1_footer(path: Path, column: str, row: int, value) -> Path:
    """Change one value of a v1 file's top-level footer (``tortilla:*`` columns), in place."""
    data = path.read_bytes()
    offset, length = int.from_bytes(data[2:10], "little"), int.from_bytes(data[10:18], "little")
    table = pq.read_table(io.BytesIO(data[offset : offset + length])).to_pydict()
    table[column][row] = value
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(table), sink)
    footer = sink.getvalue().to_pybytes()
    meta = data[int.from_bytes(data[26:34], "little") :]
    header = bytearray(data[:HEADER])
    header[10:18] = len(footer).to_bytes(8, "little")
    header[26:34] = (offset + len(footer)).to_bytes(8, "little")
    path.write_bytes(bytes(header) + data[HEADER:offset] + footer + meta)
    return path


def write_taco_v2(path: Path, samples: list[PairSample], lr_id: str = "lr", hr_id: str = "hr") -> Path:
    """A TACO v2 file (``.tacozip``) made by tacotoolbox; samples whose split is None get no split column."""
    import tacotoolbox
    from tacotoolbox.datamodel import Sample, Taco, Tortilla
    from tacotoolbox.datamodel.sample import Split
    from tacotoolbox.datamodel.taco import Provider

    files = path.parent / f"{path.stem}_members"
    files.mkdir(parents=True, exist_ok=True)
    groups = []
    for sample in samples:
        members = []
        for member, data in _members(sample, lr_id, hr_id).items():
            file = files / f"{sample.id}_{member}.tif"
            file.write_bytes(data)
            members.append(Sample(id=member, path=file))
        group = Sample(id=sample.id, path=Tortilla(samples=members))
        if sample.split is not None:
            group.extend_with(Split(split=sample.split))
        groups.append(group)
    taco = Taco(
        tortilla=Tortilla(samples=groups),
        id="tiny-sen2naip",
        dataset_version="0.0.1",
        description="LR/HR pairs written by srgan's tests in SEN2NAIP's layout",
        licenses=["CC0-1.0"],
        providers=[Provider(name="srgan tests")],
        tasks=["super-resolution"],
    )
    (written,) = tacotoolbox.create(taco, path, split_size=None)
    return written


def _tortilla(rows: list[tuple[str, str, str | None, bytes]], magic: bytes, collection: dict | None = None) -> bytes:
    """A v1 tortilla (or TACO) of ``rows`` ``(id, file format, split, bytes)``."""
    offsets, pile = [], io.BytesIO()
    for *_, data in rows:
        offsets.append(HEADER + pile.tell())
        pile.write(data)
    footer_table = pa.table(
        {
            "tortilla:id": [r[0] for r in rows],
            "tortilla:file_format": [r[1] for r in rows],
            "tortilla:data_split": pa.array([r[2] for r in rows], pa.string()),
            "tortilla:offset": pa.array(offsets, pa.int64()),
            "tortilla:length": pa.array([len(r[3]) for r in rows], pa.int64()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(footer_table, sink)
    footer = sink.getvalue().to_pybytes()
    header = bytearray(HEADER)
    header[0:2] = magic
    header[2:10] = (HEADER + pile.tell()).to_bytes(8, "little")
    header[10:18] = len(footer).to_bytes(8, "little")
    header[18:26] = (1).to_bytes(8, "little")
    body = pile.getvalue() + footer
    if collection is None:
        return bytes(header) + body
    meta = json.dumps(collection).encode()
    header[26:34] = (HEADER + len(body)).to_bytes(8, "little")
    header[34:42] = len(meta).to_bytes(8, "little")
    return bytes(header) + body + meta


def write_taco_v1(path: Path, samples: list[PairSample], lr_id: str = "lr", hr_id: str = "hr") -> Path:
    """A TACO v1 file (``.taco``) of group samples, the split in ``tortilla:data_split``."""
    rows = []
    for sample in samples:
        members = [(key, "GTiff", None, data) for key, data in _members(sample, lr_id, hr_id).items()]
        rows.append((sample.id, "TORTILLA", sample.split, _tortilla(members, b"#y")))
    path.write_bytes(_tortilla(rows, b"WX", {"id": "tiny-sen2naip", "dataset_version": "0.0.1"}))
    return path


def write_taco(path: Path, samples: list[PairSample], fmt: str, **kwargs) -> Path:
    """``fmt`` "v1": ``<path>.taco``; "v2": ``<path>.tacozip``."""
    if fmt == "v1":
        return write_taco_v1(path.with_suffix(".taco"), samples, **kwargs)
    return write_taco_v2(path.with_suffix(".tacozip"), samples, **kwargs)

"""Real LR/HR pairs from TACO files (SEN2NAIP as distributed), read with ``tacoreader``.

A TACO file holds samples; in SEN2NAIP each sample is a group of two GeoTIFFs, ``lr`` (Sentinel-2,
10 m) and ``hr`` (NAIP, 2.5 m), plus metadata columns, among them the sample's split. Two formats
are read by the same code, told apart by the file's first bytes:

- TACO v1 (``.taco``; SEN2NAIP's first distribution): a 200-byte header starting ``WX`` (a
  tortilla: ``#y``), read by ``tacoreader.v1``. ``tacoreader.v1.load(file)`` gives a dataframe of
  samples (``tortilla:id``, ``tortilla:file_format`` ``TORTILLA`` for a group, the split in
  ``tortilla:data_split``); ``.read(i)`` gives a sample's members, and a member's ``.read(j)`` its
  GDAL path (``/vsisubfile/<offset>_<length>,<file>``).
- TACO v2 (a ``.tacozip`` / ``.zip`` archive, or a TACO folder with ``COLLECTION.json``), read by
  ``tacoreader.load(file)``: ``.data`` holds the samples (``id``, ``type`` ``FOLDER`` for a group,
  the split in ``split``) and the flat view ``l1`` of ``.sql(...)`` every sample's members with
  their GDAL path (``internal:gdal_vsi``).

``tacoreader`` is an optional extra (``pip install 'srgan[taco]'``), imported only here, when a
TACO file is read.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srgan.data.datasets import GeoTiffSource, PairedData, RegionPair, short
from srgan.data.rasters import RasterError, parse_nodata

# The file's own split names -> srgan's.
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
# Where each format keeps a sample's split.
SPLIT_COLUMNS = {"v1": ("tortilla:data_split",), "v2": ("split", "tortilla:data_split")}
SPLIT_SOURCES = ("auto", "taco", "hash")
INSTALL_HINT = "pip install 'srgan[taco]'"


@dataclass
class TacoSample:
    """One sample of a TACO file: its id, its split as the file names it (None: none given),
    whether it is a group, and its members' GDAL paths by member id."""

    id: str
    split: str | None
    group: bool
    members: dict[str, Any] = field(default_factory=dict)


@dataclass
class TacoCatalogue:
    """What a TACO file lists: its format, the column holding the split (None: the file has none)
    and its samples in the file's order."""

    path: Path
    format: str
    split_column: str | None
    samples: list[TacoSample]


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"reading TACO files needs tacoreader ({err}): {INSTALL_HINT}") from None


def taco_format(path: Path) -> str:
    """``"v1"`` or ``"v2"`` from the file's first bytes (a folder: v2 with ``COLLECTION.json``);
    an error names the file otherwise."""
    if path.is_dir():
        if (path / "COLLECTION.json").is_file():
            return "v2"
        raise RasterError(f"{path}: a folder without COLLECTION.json is not a TACO dataset")
    if not path.is_file():
        raise RasterError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] in (b"WX", b"#y"):
        return "v1"
    if head == b"PK\x03\x04":
        # tacoreader.load takes a zip for TACO v2 by its name, and a .taco name for a v1 file.
        if path.suffix.lower() not in (".tacozip", ".zip"):
            raise RasterError(
                f"{path}: a TACO v2 archive (a zip) named {path.suffix or 'without a suffix'}; tacoreader reads it "
                "only as .tacozip or .zip: rename it"
            )
        return "v2"
    raise RasterError(f"{path}: not a TACO file (neither TACO v1, which starts with 'WX', nor a TACO v2 zip)")


def _split_value(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _read_v1(path: Path) -> TacoCatalogue:
    v1 = _import("tacoreader.v1")
    try:
        table = v1.load(str(path))
        column = next((c for c in SPLIT_COLUMNS["v1"] if c in table.columns), None)
        samples = []
        for i in range(len(table)):
            row = table.iloc[i]
            group = row["tortilla:file_format"] == "TORTILLA"
            sample = TacoSample(str(row["tortilla:id"]), _split_value(row[column]) if column else None, group)
            if group:
                members = table.read(i)
                sample.members = {str(members.iloc[j]["tortilla:id"]): members.read(j) for j in range(len(members))}
            samples.append(sample)
    except Exception as err:  # tacoreader.v1 fails on a damaged file in many ways (AttributeError, ...)
        if isinstance(err, ImportError):
            raise
        raise RasterError(
            f"{path}: cannot read as a TACO v1 file ({type(err).__name__}: {short(str(err), 300)})"
        ) from err
    return TacoCatalogue(path, "v1", column, samples)


def _read_v2(path: Path) -> TacoCatalogue:
    tacoreader = _import("tacoreader")
    try:
        with tacoreader.load(str(path), backend="pyarrow") as dataset:
            top = dataset.data
            rows, columns = top.to_arrow().to_pylist(), top.columns
            members: dict[str, dict[str, Any]] = {}
            if dataset.pit_schema.max_depth() >= 1:
                # The flat view of level 1: every sample's members in one query.
                flat = dataset.sql(
                    'SELECT "l0:id" AS sample, "l1:id" AS member, "l1:type" AS type, '
                    '"l1:internal:gdal_vsi" AS vsi FROM l1'
                )
                for m in flat.to_pylist():
                    members.setdefault(m["sample"], {})[m["member"]] = m["vsi"] if m["type"] == "FILE" else None
    except AttributeError as err:
        if "fetch_arrow_table" in str(err):
            import duckdb

            raise ImportError(
                f"{path}: tacoreader {tacoreader.__version__} cannot run with duckdb {duckdb.__version__} "
                f"({err}): install duckdb<2 ({INSTALL_HINT} pins it)"
            ) from None
        raise
    except Exception as err:  # tacoreader's own errors have no common base
        if isinstance(err, ImportError):
            raise
        raise RasterError(f"{path}: cannot read as a TACO file ({type(err).__name__}: {short(str(err), 300)})") from err
    column = next((c for c in SPLIT_COLUMNS["v2"] if c in columns), None)
    samples = [
        TacoSample(
            str(r["id"]),
            _split_value(r[column]) if column else None,
            r["type"] == "FOLDER",
            members.get(r["id"], {}),
        )
        for r in rows
    ]
    return TacoCatalogue(path, "v2", column, samples)


def read_catalogue(path: str | os.PathLike) -> TacoCatalogue:
    """The samples of one TACO file (v1 or v2) with their splits and members' GDAL paths."""
    path = Path(path).expanduser().resolve()
    fmt = taco_format(path)
    catalogue = _read_v1(path) if fmt == "v1" else _read_v2(path)
    if not catalogue.samples:
        raise RasterError(f"{path}: the TACO file holds no sample")
    seen: set[str] = set()
    for sample in catalogue.samples:
        if sample.id in seen:
            raise RasterError(f"{path}: sample {short(repr(sample.id))} appears twice")
        seen.add(sample.id)
    return catalogue


class TacoPairsData(PairedData):
    """Real LR/HR pairs from one or more TACO files (SEN2NAIP as distributed): each sample is a
    region, a group with an LR and an HR GeoTIFF (members ``lr_id`` and ``hr_id``).

    ``split.source`` chooses each sample's split: ``taco`` the file's own split column
    (``validation`` is srgan's ``val``), ``hash`` a hash of the sample id against
    ``split.fractions`` (as :class:`srgan.data.datasets.PairedFolderData` does with folder names),
    ``auto`` (the default) the file's column where the file has one, else the hash. In every case
    the keys of ``split.fractions`` are the splits the dataset uses, and each must receive a
    sample; samples of other splits are left out. Everything else (scale and shape checks, band
    names, normalisation fitted on the train samples only, patches) is :class:`PairedData`'s.
    """

    unit = "sample"

    def __init__(
        self,
        path: str | Sequence[str],
        bands: Sequence[str | int],
        num_bands: int,
        scale: int,
        normalization: Any,
        split: dict[str, Any],
        patch_size: int = 128,
        val_tile: int = 128,
        rgb_bands: Sequence[str | int] | None = None,
        name: str = "taco",
        lr_bands: Sequence[str | int] | None = None,
        lr_normalization: Any = None,
        lr_id: str = "lr",
        hr_id: str = "hr",
        cache_dir: str | None = None,
        nodata: float | str | None = None,
        band_names: Sequence[str] | None = None,
    ) -> None:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths:
            raise ValueError("dataset.path lists no TACO file")
        self.files = [Path(p).expanduser().resolve() for p in paths]
        self.nodata_setting = parse_nodata(nodata, "dataset.nodata")
        self.split_source = split.get("source", "auto")
        if self.split_source not in SPLIT_SOURCES:
            raise ValueError(f"dataset.split.source must be one of {SPLIT_SOURCES}, got {self.split_source!r}")
        self._split_counts: dict[str, int] = {}
        hr_bands = list(bands)
        chosen_lr = list(lr_bands) if lr_bands is not None else hr_bands
        super().__init__(
            self._listed(lr_id, hr_id, chosen_lr, hr_bands),
            self.files[0],
            bands,
            num_bands,
            scale,
            normalization,
            split,
            patch_size,
            val_tile,
            rgb_bands,
            name,
            lr_bands,
            lr_normalization,
            cache_dir,
            band_names,
            split_keys=("fractions", "source"),
        )

    def _listed(self, lr_id: str, hr_id: str, lr_bands: list, hr_bands: list) -> Iterator[RegionPair]:
        """Every sample of every file as a region, file by file (each read when its turn comes)."""
        for file in self.files:
            catalogue = read_catalogue(file)
            by_file = self._splits_by_file(catalogue)
            for sample in catalogue.samples:
                split_name = self._file_split(file, sample, catalogue.split_column) if by_file else None
                yield RegionPair(
                    sample.id,
                    self._member(file, sample, lr_id, lr_bands),
                    self._member(file, sample, hr_id, hr_bands),
                    f"{file}/{sample.id}",
                    lr_id,
                    hr_id,
                    split_name,
                )

    def _splits_by_file(self, catalogue: TacoCatalogue) -> bool:
        """Whether the file's own split column assigns its samples' splits (else the hash of their ids)."""
        column = catalogue.split_column
        if self.split_source == "taco" and column is None:
            raise RasterError(
                f"{catalogue.path}: dataset.split.source=taco but the file has no split column "
                f"({' or '.join(SPLIT_COLUMNS[catalogue.format])}); use dataset.split.source=hash"
            )
        return self.split_source == "taco" or (self.split_source == "auto" and column is not None)

    def _file_split(self, file: Path, sample: TacoSample, column: str | None) -> str:
        """The sample's split by the file's column, in srgan's names, counted for messages."""
        if sample.split not in SPLIT_NAMES:
            raise RasterError(
                f"{file}/{sample.id}: split {short(repr(sample.split))} (column {column!r}) is not one of "
                f"{sorted(SPLIT_NAMES)}; use dataset.split.source=hash to split by sample id"
            )
        split_name = SPLIT_NAMES[sample.split]
        self._split_counts[split_name] = self._split_counts.get(split_name, 0) + 1
        return split_name

    def _member(self, file: Path, sample: TacoSample, member: str, bands: list) -> GeoTiffSource:
        where = f"{file}/{sample.id}"
        if not sample.group:
            raise RasterError(f"{where}: the sample is a single file, not a group with {member!r} and its pair")
        gdal_path = sample.members.get(member)
        if not isinstance(gdal_path, str):
            held = short(repr(sorted(sample.members)), 200)
            raise RasterError(
                f"{where}: the sample has no {member!r} GeoTIFF (it holds {held}); set dataset.lr_id / dataset.hr_id"
                if member not in sample.members
                else f"{where}: the sample's {member!r} is not a GeoTIFF file (a nested group or raw bytes)"
            )
        return GeoTiffSource.member(gdal_path, file, f"{where}/{member}", bands, self.nodata_setting)

    def _empty_split_message(self, split_name: str, count: int) -> str:
        files = ", ".join(str(f) for f in self.files)
        if self._split_counts:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self._split_counts.items()))
            return (
                f"{files}: no sample is in the {split_name!r} split by the file's own split column ({counts}); "
                f"drop {split_name!r} from dataset.split.fractions or set dataset.split.source=hash"
            )
        return (
            f"{files}: no sample falls in the {split_name!r} split ({count} samples, split by sample id); "
            "add samples or change dataset.split.fractions"
        )

"""SEN2NAIP as distributed: TACO files (v1 as written by pytortilla, v2 by tacotoolbox) read with
the real tacoreader into real LR/HR pairs, split as the file says, normalised on train samples."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from srgan.data.degradation import Resample
from srgan.data.normalization import LinearScale, ZScore
from srgan.data.rasters import RasterError
from srgan.data.taco import TacoPairsData, read_catalogue
from tests.conftest import compose_config, write_geotiff
from tests.taco_files import pair_samples, write_taco

FORMATS = ["v1", "v2"]
SPLITS = ["train", "validation", "train", "test", "train", "validation", "test", "train"]
FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def taco_pairs(path, **kwargs) -> TacoPairsData:
    args = dict(
        path=[str(p) for p in path] if isinstance(path, list) else str(path),
        bands=[1, 2, 3, 4],
        num_bands=4,
        scale=4,
        normalization=LinearScale(10000.0),
        split={"fractions": FRACTIONS},
        patch_size=32,
        val_tile=32,
    )
    args.update(kwargs)
    return TacoPairsData(**args)


@pytest.fixture(params=FORMATS)
def fmt(request) -> str:
    return request.param


def test_pairs_come_out_aligned_with_their_pixels_and_the_file_split(tmp_path, fmt):
    samples = pair_samples(SPLITS)
    path = write_taco(tmp_path / "sen2naip", samples, fmt)
    catalogue = read_catalogue(path)
    assert catalogue.format == fmt and [s.id for s in catalogue.samples] == [s.id for s in samples]
    assert catalogue.split_column == ("tortilla:data_split" if fmt == "v1" else "split")
    data = taco_pairs(path)
    # The file's own split, "validation" read as val.
    expect = {"train": [], "val": [], "test": []}
    for s in samples:
        expect["val" if s.split == "validation" else s.split].append(s.id)
    assert data.region_names == expect
    # Every region holds the very pixels of its sample's lr and hr GeoTIFFs.
    by_id = {s.id: s for s in samples}
    for split, names in expect.items():
        for name, region in zip(names, data.regions(split)):
            hr, lr = (np.rint(data.normalization.denormalize(x).numpy()) for x in (region.hr, region.lr))
            np.testing.assert_array_equal(hr, by_id[name].hr)
            np.testing.assert_array_equal(lr, by_id[name].lr)
            assert region.source == f"{path}/{name}"
    area = data.areas("test")[0]
    assert area.path == f"{path}/{expect['test'][0]}/hr" and area.pixels == (0, 0, 64, 64)
    # Training patches: LR is the (truncated) block mean of HR at the same place.
    for item in (data.train_dataset(6, seed=3, augment=False)[i] for i in range(6)):
        assert item["lr"].shape == (4, 8, 8) and item["hr"].shape == (4, 32, 32)
        assert (Resample(4)(item["hr"]) - item["lr"]).abs().max() < 1.5 / 10000


def test_the_statistics_come_from_the_train_samples_only(tmp_path, fmt):
    # Train HR around 1000-2000 DN, val and test around 5000-6000: a fit on all would be far off.
    samples = pair_samples(SPLITS, level={"train": 1000, "validation": 5000, "test": 5000})
    path = write_taco(tmp_path / "sen2naip", samples, fmt)
    norm, lr_norm = ZScore(), ZScore()
    data = taco_pairs(path, normalization=norm, lr_normalization=lr_norm, cache_dir=str(tmp_path / "cache"))
    train = [s for s in samples if s.split == "train"]
    hr = np.concatenate([s.hr.reshape(4, -1) for s in train], 1).astype(np.float64)
    lr = np.concatenate([s.lr.reshape(4, -1) for s in train], 1).astype(np.float64)
    np.testing.assert_allclose(norm.center, hr.mean(1), rtol=1e-6)
    np.testing.assert_allclose(norm.width, hr.std(1), rtol=1e-4)
    np.testing.assert_allclose(lr_norm.center, lr.mean(1), rtol=1e-6)
    assert all(c < 2000 for c in norm.center)
    # Cached under the TACO file's size and time: a second dataset reads the same statistics.
    again = ZScore()
    taco_pairs(path, normalization=again, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_allclose(again.center, norm.center)
    item = data.train_dataset(2, seed=0)[1]
    assert torch.isfinite(item["hr"]).all() and abs(float(item["hr"].mean())) < 3


def test_hash_split_by_sample_id_and_a_file_without_a_split_column(tmp_path):
    from srgan.data.datasets import split_by_hash

    samples = pair_samples(SPLITS * 2)
    path = write_taco(tmp_path / "with_split", samples, "v2")
    hashed = taco_pairs(path, split={"source": "hash", "fractions": FRACTIONS})
    for split, names in hashed.region_names.items():
        assert names and all(split_by_hash(n, FRACTIONS) == split for n in names)
    assert hashed.region_names != taco_pairs(path).region_names  # the file's split is another one
    for sample in samples:
        sample.split = None
    bare = write_taco(tmp_path / "no_split", samples, "v2")
    assert read_catalogue(bare).split_column is None
    assert taco_pairs(bare).region_names == hashed.region_names  # auto: the hash, by sample id
    with pytest.raises(RasterError, match=rf"{bare}: dataset.split.source=taco but the file has no split column"):
        taco_pairs(bare, split={"source": "taco", "fractions": FRACTIONS})
    with pytest.raises(ValueError, match="dataset.split.source must be one of"):
        taco_pairs(path, split={"source": "file", "fractions": FRACTIONS})


def test_several_files_feed_one_dataset_and_go_to_workers(tmp_path):
    a = write_taco(tmp_path / "part1", pair_samples(SPLITS[:4]), "v1")
    more = pair_samples(SPLITS, seed=1)
    for i, s in enumerate(more):
        s.id = f"ROI_1{i:03d}"
    b = write_taco(tmp_path / "part2", more, "v2")
    data = taco_pairs([str(a), str(b)])
    assert sum(len(v) for v in data.region_names.values()) == 12
    assert data.files == [a, b] and data.path == a
    patches = data.train_dataset(4, seed=0)
    # What a DataLoader worker receives: no open handle, no tacoreader object.
    clone = pickle.loads(pickle.dumps(patches))
    torch.testing.assert_close(clone[2]["hr"], patches[2]["hr"])


def test_errors_name_the_file_and_the_sample(tmp_path, fmt):
    with pytest.raises(RasterError, match=r"nowhere\.taco: no such file"):
        taco_pairs(tmp_path / "nowhere.taco")
    tif = write_geotiff(tmp_path / "scene.taco", np.zeros((4, 8, 8), np.uint16), None)
    with pytest.raises(RasterError, match=rf"{tif}: not a TACO file"):
        taco_pairs(tif)
    samples = pair_samples(SPLITS)
    samples[3].lr = samples[3].lr[:, :15]
    bad_shape = write_taco(tmp_path / "shape", samples, fmt)
    with pytest.raises(RasterError, match=rf"{bad_shape}/ROI_0003: hr is 64x64 px and lr 15x16 px, not x4"):
        taco_pairs(bad_shape)
    renamed = write_taco(tmp_path / "renamed", pair_samples(SPLITS), fmt, hr_id="target")
    with pytest.raises(RasterError, match=rf"{renamed}/ROI_0000: the sample has no 'hr' GeoTIFF .*'lr', 'target'"):
        taco_pairs(renamed)
    assert taco_pairs(renamed, hr_id="target").region_names["train"]
    no_test = write_taco(tmp_path / "no_test", pair_samples(["train", "validation", "train"]), fmt)
    with pytest.raises(RasterError, match=rf"{no_test}: no sample is in the 'test' split .*train 2, val 1"):
        taco_pairs(no_test)
    # A file without test samples serves training when the dataset uses train and val only.
    assert set(taco_pairs(no_test, split={"fractions": {"train": 0.9, "val": 0.1}}).pairs) == {"train", "val"}
    with pytest.raises(RasterError, match=r"band index 5 is out of range"):
        taco_pairs(no_test, bands=[1, 2, 3, 5], split={"fractions": {"train": 0.9, "val": 0.1}})


def test_v1_specific_errors_a_strange_split_and_a_member_missing_in_one_sample(tmp_path):
    """v2 files cannot hold these (tacotoolbox refuses samples of different make-up); v1 files can."""
    samples = pair_samples(SPLITS)
    samples[2].split = "holdout"
    odd = write_taco(tmp_path / "odd", samples, "v1")
    with pytest.raises(RasterError, match=rf"{odd}/ROI_0002: split 'holdout' \(column 'tortilla:data_split'\)"):
        taco_pairs(odd)
    hashed = taco_pairs(odd, split={"source": "hash", "fractions": FRACTIONS})
    assert sum(len(v) for v in hashed.pairs.values()) == 8
    samples = pair_samples(SPLITS)
    samples[5].rename = {"hr": "mask"}
    lonely = write_taco(tmp_path / "lonely", samples, "v1")
    with pytest.raises(
        RasterError, match=rf"{lonely}/ROI_0005: the sample has no 'hr' GeoTIFF \(it holds \['lr', 'mask'\]\)"
    ):
        taco_pairs(lonely)


def test_a_v2_taco_folder_reads_like_the_archive_and_members_stay_inside_their_container(tmp_path):
    from srgan.data.datasets import GeoTiffSource
    from tests.taco_files import write_taco_v2

    samples = pair_samples(SPLITS)
    archive = taco_pairs(write_taco(tmp_path / "archive", samples, "v2"))
    folder = write_taco_v2(tmp_path / "folder", samples)
    assert folder.is_dir() and (folder / "COLLECTION.json").is_file()
    data = taco_pairs(folder)
    assert data.region_names == archive.region_names
    torch.testing.assert_close(data.region("test").hr, archive.region("test").hr)
    # A GDAL path that a container's metadata points elsewhere is refused.
    outside = write_geotiff(tmp_path / "elsewhere.tif", np.zeros((4, 8, 8), np.uint16), None)
    for gdal_path, container in [
        (str(outside), folder),
        (f"{folder}/../elsewhere.tif", folder),
        (f"/vsisubfile/0_100,{outside}", tmp_path / "archive.tacozip"),
        (f"/vsizip/{tmp_path}/archive.tacozip/DATA/ROI_0000/hr", tmp_path / "archive.tacozip"),
    ]:
        with pytest.raises(RasterError, match=r"x/ROI/hr: its data path .* does not point into"):
            GeoTiffSource.member(gdal_path, container, "x/ROI/hr", [1, 2, 3, 4])


def test_a_v2_archive_named_taco_is_told_to_be_renamed(tmp_path):
    path = write_taco(tmp_path / "sen2naip", pair_samples(SPLITS), "v2")
    wrong = path.rename(tmp_path / "sen2naip.taco")
    with pytest.raises(RasterError, match=rf"{wrong}: a TACO v2 archive .* rename it"):
        taco_pairs(wrong)


def test_band_names_come_from_the_config_only_where_the_files_have_none(tmp_path, fmt):
    bare = write_taco(tmp_path / "bare", pair_samples(SPLITS), fmt)
    assert taco_pairs(bare).band_names == ["band1", "band2", "band3", "band4"]
    assert taco_pairs(bare, band_names=["R", "G", "B", "NIR"]).band_names == ["R", "G", "B", "NIR"]
    named = write_taco(tmp_path / "named", pair_samples(SPLITS, names=["B04", "B03", "B02", "B08"]), fmt)
    assert taco_pairs(named, band_names=["B04", "B03", "B02", "B08"]).band_names == ["B04", "B03", "B02", "B08"]
    # Bands by name work where the files carry names.
    by_name = taco_pairs(named, bands=["B08", "B04"], num_bands=2, band_names=None, rgb_bands=["B04", "B04", "B08"])
    assert by_name.band_names == ["B08", "B04"] and by_name.rgb_indices == [1, 1, 0]
    with pytest.raises(RasterError) as err:
        taco_pairs(named, band_names=["R", "G", "B", "NIR"])
    assert f"{named}/ROI_0000/hr" in str(err.value)
    assert "['B04', 'B03', 'B02', 'B08']" in str(err.value) and "['R', 'G', 'B', 'NIR']" in str(err.value)
    with pytest.raises(ValueError, match=r"dataset.band_names must name each of the 4 dataset.bands"):
        taco_pairs(bare, band_names=["R", "G", "B"])


def test_a_missing_tacoreader_names_the_extra_to_install(tmp_path, monkeypatch):
    path = write_taco(tmp_path / "sen2naip", pair_samples(SPLITS), "v2")
    monkeypatch.setitem(sys.modules, "tacoreader", None)
    with pytest.raises(ImportError, match=r"pip install 'srgan\[taco\]'"):
        taco_pairs(path)


def test_the_sen2naip_option_and_the_paper_experiment_instantiate_on_a_made_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))
    path = write_taco(tmp_path / "sen2naip", pair_samples(SPLITS, size=32), "v1")
    cfg = compose_config("train", ["dataset=sen2naip", f"dataset.path={path}"])
    assert cfg.generator.in_channels == cfg.dataset.num_bands == 4
    data = instantiate(cfg.dataset, _convert_="all")
    assert isinstance(data, TacoPairsData) and data.band_names == ["R", "G", "B", "NIR"]
    assert data.rgb_indices == [0, 1, 2] and data.normalization.to_config()["scale"] == 10000.0  # uint16
    assert data.train_dataset(1, 0)[0]["hr"].shape == (4, 128, 128)
    paper = compose_config("train", ["experiment=paper_rgbn_x4", f"dataset.path={path}"])
    assert paper.dataset._target_ == "srgan.data.taco.TacoPairsData" and paper.generator.in_channels == 4
    folders = compose_config("train", ["experiment=paper_rgbn_x4", "dataset=paired_folder", "dataset.root=/x"])
    assert folders.dataset._target_ == "srgan.data.datasets.PairedFolderData"


@pytest.mark.slow
def test_a_sen2naip_run_trains_exports_and_evaluates(tmp_path, tiny_overrides):
    """``srgan-train dataset=sen2naip dataset.path=<file>``, then ``srgan-eval model=<run>`` on the
    same file (its test samples) and from the model card alone."""
    import json
    import subprocess

    from srgan.data.card import check_held_out, dataset_from_card
    from srgan.engine.checkpoint import load_model
    from srgan.train import train

    path = write_taco(tmp_path / "sen2naip", pair_samples(SPLITS), "v2")
    overrides = [
        "dataset=sen2naip",
        f"dataset.path={path}",
        "dataset.patch_size=32",
        "dataset.val_tile=32",
        "dataset.cache_dir=null",
        "trainer.max_steps=2",
    ]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    model = load_model(result["run_dir"])
    assert model.band_names == ["R", "G", "B", "NIR"] and model.scale == 4
    record = model.config["data"]["dataset"]
    assert record["kind"] == "taco_pairs" and record["path"] == [str(path)]
    assert record["split"] == {"source": "auto", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}}
    rebuilt = dataset_from_card(model)
    assert isinstance(rebuilt, TacoPairsData) and rebuilt.region_names["test"] == ["ROI_0003", "ROI_0006"]
    assert check_held_out(model, rebuilt, "test") == 4  # the four train samples, none overlapping
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "srgan.evaluate",
            f"model={result['run_dir']}",
            "dataset=sen2naip",
            f"dataset.path={path}",
            "dataset.patch_size=32",
            "dataset.val_tile=32",
            "dataset.cache_dir=null",
            f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
            f"output={tmp_path}/eval.json",
            "tile=8",
            "overlap=2",
            "lpips=null",
            "figure=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["dataset"] == "sen2naip" and report["split"] == "test" and report["bands"] == ["R", "G", "B", "NIR"]
    sr, bicubic = report["results"]["sr"], report["results"]["bicubic"]
    assert 10 < bicubic["psnr"] < 60 and abs(sr["psnr"] - bicubic["psnr"]) < 10
    assert {"psnr_R", "psnr_NIR"} <= set(sr)


def test_a_member_whose_bytes_are_not_a_geotiff_is_refused_and_not_followed(tmp_path, fmt):
    """GDAL picks a driver from the bytes: a member that is VRT XML would read any file (or URL)
    it names. A TACO member is opened as GeoTIFF only, when listed and when reopened to read."""
    from rasterio.windows import Window

    from tests.taco_files import overwrite_member, vrt_bytes

    secret = write_geotiff(tmp_path / "secret.tif", np.full((4, 64, 64), 7777, np.uint16), None)
    samples = pair_samples(SPLITS)
    samples[3].alter = {"hr": lambda _: vrt_bytes(str(secret))}
    path = write_taco(tmp_path / "vrt", samples, fmt)
    with pytest.raises(RasterError, match=rf"{path}/ROI_0003/hr: not a GeoTIFF.*TACO members are read as GeoTIFF"):
        taco_pairs(path)
    # The same after opening: a member changed in the file is refused when a worker reopens it.
    clean = write_taco(tmp_path / "clean", pair_samples(SPLITS), fmt)
    member = taco_pairs(clean).pairs["test"][0][1]
    overwrite_member(member.gdal_path, vrt_bytes(str(secret)))
    for source in (member, pickle.loads(pickle.dumps(member))):
        with pytest.raises(RasterError, match=rf"{clean}/ROI_0003/hr: not a GeoTIFF.*TACO members are read as"):
            source.read(Window(0, 0, 64, 64))


def test_a_truncated_member_is_a_raster_error_naming_the_member_and_the_window(tmp_path):
    samples = pair_samples(SPLITS)
    samples[3].alter = {"hr": lambda data: data[: len(data) // 2]}  # the header intact, half the pixels
    path = write_taco(tmp_path / "cut", samples, "v1")
    data = taco_pairs(path)
    # Held-out regions are streamed: the bad member is named when its pixels are read.
    with pytest.raises(RasterError, match=rf"{path}/ROI_0003/hr: cannot read rows 0-64, columns 0-64 \(.*\)"):
        list(data.regions("test"))


def test_a_v1_footer_that_tacoreader_cannot_parse_is_a_raster_error_naming_the_file(tmp_path):
    from tests.taco_files import set_v1_footer

    path = set_v1_footer(write_taco(tmp_path / "bad", pair_samples(SPLITS), "v1"), "tortilla:length", 1, -1)
    with pytest.raises(RasterError, match=rf"{path}: cannot read as a TACO v1 file \(AttributeError") as err:
        taco_pairs(path)
    assert isinstance(err.value.__cause__, AttributeError)


def test_a_split_without_fractions_and_long_values_from_the_file_are_named_shortly(tmp_path):
    path = write_taco(tmp_path / "sen2naip", pair_samples(SPLITS), "v1")
    with pytest.raises(ValueError, match=r"dataset.split.fractions is missing"):
        taco_pairs(path, split={"source": "hash"})
    samples = pair_samples(SPLITS)
    samples[2].split = "holdout" * 10000
    odd = write_taco(tmp_path / "odd", samples, "v1")
    with pytest.raises(
        RasterError, match=rf"{odd}/ROI_0002: split 'holdoutholdout.*\.\.\. \(70002 characters\) \(column"
    ) as err:
        taco_pairs(odd)
    assert len(str(err.value)) < 500

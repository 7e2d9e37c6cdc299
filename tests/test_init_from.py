"""``init_from``: a new run from trained weights (run folder, model folder, runs:/ URI), strict and
partial loads, band adaptation by name, the discriminator from a checkpoint, damaged sources."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from safetensors.torch import load_file

from srgan.config import ConfigError, validate_training_config
from srgan.engine.checkpoint import export_model, find_checkpoint
from srgan.engine.init_from import (
    InitError,
    load_discriminator,
    load_generator,
    resolve_source,
    summary,
)
from srgan.engine.state_io import load_tree
from srgan.models import RCABGenerator
from srgan.train import train
from tests.conftest import TINY_GENERATOR, compose_config, model_card, train_tracked

BANDS = ["B04", "B03", "B02", "B08"]
# A new run from the source with G's and D's learning rates at 0: what it exports is what it loaded.
FROZEN = ["trainer.max_steps=1", "schedule.optimizer_g.lr=0", "schedule.optimizer_d.lr=0"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny 4-band run of 4 steps (2 of them adversarial, so D has trained), tracked in SQLite."""
    return train_tracked(tmp_path_factory.mktemp("init_source"), 4)


def _cfg(source, *extra: str):
    return compose_config("train", source.overrides + list(extra))


def _generator(cfg) -> torch.nn.Module:
    return instantiate(cfg.generator, _convert_="all")


def _generator_cfg(cfg) -> dict:
    return OmegaConf.to_container(cfg.generator, resolve=True)


def _exported(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model" / "generator.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- the generator: exact copies, strict and partial loads -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run", "model"])
def test_generator_from_run_or_model_folder_is_the_source_exactly(source, where):
    cfg = _cfg(source)
    generator = _generator(cfg)
    weights = _exported(source.run_dir)
    assert not torch.equal(generator.state_dict()["head.weight"], weights["head.weight"])  # a real change
    src = resolve_source(str(source.run_dir if where == "run" else source.run_dir / "model"))
    assert src.kind == ("run folder" if where == "run" else "model folder")
    assert (src.checkpoint is not None) == (where == "run")
    loaded = load_generator(generator, src, _generator_cfg(cfg), BANDS)
    _assert_same(generator.state_dict(), weights)
    report = loaded["generator"]
    assert report["loaded"] == report["of"] == len(weights) and loaded["bands"] is None
    assert not report["missing"] and not report["unexpected"] and not report["mismatched"]


@pytest.mark.slow
def test_a_different_width_is_refused_naming_the_setting(source):
    cfg = _cfg(source, "generator.n_channels=16")
    generator = _generator(cfg)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    with pytest.raises(InitError, match=r"n_channels \(source 8, this run 16\)") as err:
        load_generator(generator, resolve_source(str(source.run_dir)), _generator_cfg(cfg), BANDS)
    assert "init.strict=false" in str(err.value) and "head.weight" not in str(err.value)
    _assert_same(generator.state_dict(), before)  # nothing loaded
    other = {**_generator_cfg(_cfg(source)), "_target_": "srgan.models.RRDBGenerator"}
    with pytest.raises(InitError, match=r"_target_ \(source RCABGenerator, this run RRDBGenerator\)"):
        load_generator(generator, resolve_source(str(source.run_dir)), other, BANDS)


@pytest.mark.slow
def test_strict_false_loads_what_fits_and_reports_the_rest(source):
    cfg = _cfg(source, "generator.n_blocks=2")
    generator = _generator(cfg)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    weights = _exported(source.run_dir)
    src = resolve_source(str(source.run_dir / "model"))
    with pytest.raises(InitError, match=r"n_blocks \(source 1, this run 2\)"):
        load_generator(generator, src, _generator_cfg(cfg), BANDS)
    loaded = load_generator(generator, src, _generator_cfg(cfg), BANDS, strict=False)
    report, state = loaded["generator"], generator.state_dict()
    assert report["setting_differences"] == ["n_blocks (source 1, this run 2)"]
    # Source body.1 is the closing conv; here body.1 is a second block and body.2 the closing conv.
    assert "body.1.weight" in report["unexpected"] and "body.2.weight" in report["missing"]
    assert "body.1.body.0.weight" in report["missing"]
    fitting = [k for k in weights if k in state and weights[k].shape == state[k].shape]
    assert report["loaded"] == len(fitting) and "head.weight" in fitting and "tail.weight" in fitting
    for key in state:
        assert torch.equal(state[key], weights[key] if key in fitting else before[key]), key
    assert "missing" in summary({**loaded, "discriminator": None})


# -- band adaptation ---------------------------------------------------------------------------------


def _random_source(tmp_path: Path) -> Path:
    """A 4-band (B04, B03, B02, B08) model folder with random weights everywhere, tail included."""
    torch.manual_seed(0)
    generator = RCABGenerator(**{k: v for k, v in TINY_GENERATOR.items() if k != "_target_"})
    with torch.no_grad():
        for p in generator.parameters():
            p.normal_()
    return export_model(generator, model_card(), tmp_path / "source_model")


def _adapted(tmp_path: Path, bands: list[str], **options):
    folder = _random_source(tmp_path)
    src_state = load_file(str(folder / "generator.safetensors"))
    cfg = {**TINY_GENERATOR, "in_channels": len(bands), "out_channels": len(bands)}
    generator = RCABGenerator(**{k: v for k, v in cfg.items() if k != "_target_"})
    report = load_generator(generator, resolve_source(str(folder)), cfg, bands, **options)
    return src_state, generator, report


def test_bands_4_to_3_by_name_copy_the_source_slices_rescaled(tmp_path):
    bands = ["B08", "B02", "B04"]
    src, generator, report = _adapted(tmp_path, bands)
    state = generator.state_dict()
    for i, name in enumerate(bands):
        j = BANDS.index(name)
        torch.testing.assert_close(state["head.weight"][:, i], src["head.weight"][:, j] * (4 / 3), rtol=0, atol=1e-6)
        assert torch.equal(state["tail.weight"][i], src["tail.weight"][j])
        assert torch.equal(state["tail.bias"][i], src["tail.bias"][j])
    assert torch.equal(state["head.bias"], src["head.bias"])
    for key in src:
        if key not in ("head.weight", "tail.weight", "tail.bias"):
            assert torch.equal(state[key], src[key]), key
    b = report["bands"]
    assert b["copied"] == bands and b["mean"] == [] and b["dropped"] == ["B03"] and b["input_scale"] == 4 / 3
    assert generator(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_bands_4_to_6_by_name_new_bands_start_from_the_mean(tmp_path):
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    src, generator, report = _adapted(tmp_path, bands)
    state = generator.state_dict()
    head_mean, tail_mean, bias_mean = src["head.weight"].mean(1), src["tail.weight"].mean(0), src["tail.bias"].mean()
    for i, name in enumerate(bands):
        if name in BANDS:
            j = BANDS.index(name)
            expected = src["head.weight"][:, j] * (4 / 6)
            assert torch.equal(state["tail.weight"][i], src["tail.weight"][j])
            assert torch.equal(state["tail.bias"][i], src["tail.bias"][j])
        else:
            expected = head_mean * (4 / 6)
            torch.testing.assert_close(state["tail.weight"][i], tail_mean, rtol=0, atol=1e-6)
            torch.testing.assert_close(state["tail.bias"][i], bias_mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(state["head.weight"][:, i], expected, rtol=0, atol=1e-6)
    assert report["bands"]["copied"] == ["B02", "B03", "B04", "B08"] and report["bands"]["mean"] == ["B11", "B12"]
    # A superset keeps the first conv's response to a uniform image.
    source_head = torch.nn.Conv2d(4, 8, 3, padding=1)
    source_head.load_state_dict({"weight": src["head.weight"], "bias": src["head.bias"]})
    with torch.no_grad():
        torch.testing.assert_close(
            generator.head(torch.full((1, 6, 8, 8), 0.3)), source_head(torch.full((1, 4, 8, 8), 0.3))
        )
    assert "from mean [B11, B12]" in summary({**report, "discriminator": None})


def test_other_bands_without_adapt_bands_are_refused_or_loaded_by_position(tmp_path):
    with pytest.raises(InitError, match="init.adapt_bands=true"):
        _adapted(tmp_path, ["B08", "B04", "B03", "B02"], adapt_bands=False)
    with pytest.raises(InitError, match=r"in_channels \(source 4, this run 3\)"):
        _adapted(tmp_path, ["B04", "B03", "B02"], adapt_bands=False)
    src, generator, report = _adapted(tmp_path, ["B08", "B04", "B03", "B02"], adapt_bands=False, strict=False)
    assert report["bands"]["by_position"] and torch.equal(generator.state_dict()["head.weight"], src["head.weight"])
    src, generator, report = _adapted(tmp_path, ["B08", "B04", "B03", "B02"])  # a permutation: factor 1
    assert torch.equal(generator.state_dict()["head.weight"][:, 0], src["head.weight"][:, 3])


# -- the discriminator -------------------------------------------------------------------------------


@pytest.mark.slow
def test_discriminator_from_the_checkpoint_and_refused_from_a_model(source):
    cfg = _cfg(source)
    discriminator = instantiate(cfg.discriminator, _convert_="all")
    d_cfg = OmegaConf.to_container(cfg.discriminator, resolve=True)
    report = load_discriminator(discriminator, resolve_source(str(source.run_dir)), d_cfg)
    checkpoint = find_checkpoint(source.run_dir)
    assert report["step"] == 4 and report["checkpoint"] == str(checkpoint)
    _assert_same(discriminator.state_dict(), load_tree(checkpoint / "discriminator"))
    with pytest.raises(InitError, match="is a model folder"):
        load_discriminator(discriminator, resolve_source(str(source.run_dir / "model")), d_cfg)
    wider = _cfg(source, "discriminator.base_channels=16")
    with pytest.raises(InitError, match=r"base_channels \(source 8, this run 16\)"):
        load_discriminator(
            instantiate(wider.discriminator, _convert_="all"),
            resolve_source(str(source.run_dir)),
            OmegaConf.to_container(wider.discriminator, resolve=True),
        )


# -- damaged or wrong sources --------------------------------------------------------------------------


@pytest.mark.slow
def test_damaged_or_wrong_sources_are_clear_errors(source, tmp_path):
    cfg = _cfg(source)
    copy = tmp_path / "copy"
    shutil.copytree(source.run_dir, copy)
    weights = copy / "model" / "generator.safetensors"
    weights.write_bytes(b"\x00\x01 not safetensors" * 10)
    with pytest.raises(InitError, match=f"{weights}: not a readable safetensors file"):
        load_generator(_generator(cfg), resolve_source(str(copy)), _generator_cfg(cfg), BANDS)
    weights.unlink()
    with pytest.raises(InitError, match=f"{weights}: missing"):
        load_generator(_generator(cfg), resolve_source(str(copy)), _generator_cfg(cfg), BANDS)
    d_file = find_checkpoint(copy) / "discriminator.safetensors"
    d_file.write_bytes(d_file.read_bytes()[:-8] + b"XXXXXXXX")
    with pytest.raises(InitError, match=f"{d_file}: contents changed"):
        load_discriminator(instantiate(cfg.discriminator), resolve_source(str(copy)), {})
    with pytest.raises(InitError, match="is a checkpoint"):
        resolve_source(str(find_checkpoint(source.run_dir)))
    shutil.rmtree(copy / "model")
    with pytest.raises(InitError, match="no model/ export"):
        resolve_source(str(copy))
    with pytest.raises(InitError, match="no such run folder"):
        resolve_source(str(tmp_path / "nope"))


def test_config_checks_of_the_new_keys():
    with pytest.raises(ConfigError, match="init.discriminator=true"):
        validate_training_config(compose_config("train", ["init.discriminator=true"]))
    with pytest.raises(ConfigError, match="init"):
        validate_training_config(compose_config("train", ["+init.stricter=true"]))
    with pytest.raises(ConfigError, match="init_from"):
        validate_training_config(compose_config("train", ["init_from=''"]))
    settings = validate_training_config(compose_config("train", ["init_from=runs:/abc/model"]))
    assert settings.init_from == "runs:/abc/model" and settings.init.strict and settings.init.adapt_bands


# -- whole runs ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_from_a_run_folder_is_a_new_tagged_run_starting_at_the_source(source, tmp_path, caplog):
    overrides = [f"init_from={source.run_dir}", "init.discriminator=true", *FROZEN]
    result = train(_cfg(source, *overrides), tmp_path / "new")
    run_dir = Path(result["run_dir"])
    assert run_dir == (tmp_path / "new").resolve() and result["run_id"] != source.run_id and result["step"] == 1
    # Learning rates 0: the exported EMA generator and the checkpoint's D are the loaded weights, bit for bit
    # (the EMA, a copy of the random G, was re-synced to the loaded one).
    _assert_same(_exported(run_dir), _exported(source.run_dir))
    _assert_same(
        load_tree(find_checkpoint(run_dir) / "discriminator"),
        load_tree(find_checkpoint(source.run_dir) / "discriminator"),
    )
    client = MlflowClient(source.uri)
    run = client.get_run(result["run_id"])
    tags = run.data.tags
    assert tags["init_from"] == str(source.run_dir) and tags["init_from_run_id"] == source.run_id
    n = len(_exported(source.run_dir))
    assert tags["init_from_report"].startswith(f"G {n}/{n} tensors; ")
    assert "D from step 4" in tags["init_from_report"] and "mlflow.parentRunId" not in tags
    report = json.loads((run_dir / "init_from.json").read_text())
    assert report["kind"] == "run folder" and report["discriminator"]["step"] == 4
    assert report["generator"]["loaded"] == report["generator"]["of"]
    assert "init_from.json" in {f.path for f in client.list_artifacts(result["run_id"])}
    # A crashed init_from run continues from its checkpoint with the same command plus resume=: init_from is ignored.
    caplog.set_level(logging.INFO, logger="srgan.train")
    resumed = train(_cfg(source, *overrides, "trainer.max_steps=2", f"resume={run_dir}"), tmp_path / "unused")
    assert resumed["run_id"] == result["run_id"] and resumed["step"] == 2
    assert "ignored: the run continues from its checkpoint" in caplog.text


@pytest.mark.slow
def test_a_run_from_a_runs_uri_on_other_bands(source, tmp_path):
    bands = ["B08", "B04", "B03"]
    overrides = [f"init_from=runs:/{source.run_id}/model", "dataset.bands=[B08,B04,B03]", "dataset.rgb_bands=null"]
    result = train(_cfg(source, *overrides, *FROZEN), tmp_path / "bands")
    src, new = _exported(source.run_dir), _exported(Path(result["run_dir"]))
    for i, name in enumerate(bands):
        j = BANDS.index(name)
        torch.testing.assert_close(new["head.weight"][:, i], src["head.weight"][:, j] * (4 / 3), rtol=0, atol=1e-6)
        assert torch.equal(new["tail.weight"][i], src["tail.weight"][j])
    report = json.loads((Path(result["run_dir"]) / "init_from.json").read_text())
    assert report["kind"] == "MLflow URI" and report["bands"]["dropped"] == ["B02"]
    tags = MlflowClient(source.uri).get_run(result["run_id"]).data.tags
    assert tags["init_from"] == f"runs:/{source.run_id}/model" and tags["init_from_run_id"] == source.run_id
    assert "dropped [B02]" in tags["init_from_report"]
    with pytest.raises(InitError, match="is an MLflow URI"):
        src_uri = resolve_source(f"runs:/{source.run_id}/model", source.uri)
        load_discriminator(torch.nn.Linear(1, 1), src_uri, {})

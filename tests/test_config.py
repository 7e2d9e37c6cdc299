"""Every config option composes and instantiates; typos and impossible values fail early, by name."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from srgan.config import CONF_DIR, ConfigError, validate_training_config
from tests.conftest import TINY, compose_config

GROUPS = ("generator", "discriminator", "loss", "schedule", "dataset", "trainer", "tracking", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_an_option():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in GROUPS
        for o in options(g)
        if not (g == "dataset" and o in ("raster", "paired_folder", "opensr_test"))
    ],
)
def test_every_option_composes_validates_and_instantiates(group, option):
    cfg = compose_config("train", [f"{group}={option}", "generator.n_channels=8", "generator.n_blocks=1"])
    settings = validate_training_config(cfg)
    generator = instantiate(cfg.generator, _convert_="all")
    discriminator = instantiate(cfg.discriminator, _convert_="all")
    instantiate(cfg.loss)
    instantiate(settings.schedule.optimizer_g)(generator.parameters())
    # Full-data experiments name the user's data (`???`): compose and validate them, build the rest.
    if not any(OmegaConf.is_missing(cfg.dataset, k) for k in ("path", "root") if k in cfg.dataset.keys()):
        instantiate(cfg.dataset, _convert_="all")
    lr = torch.rand(2, cfg.dataset.num_bands, 12, 12)
    scale = cfg.dataset.scale
    assert generator(lr).shape == (2, cfg.dataset.num_bands, 12 * scale, 12 * scale)
    assert discriminator(generator(lr)).shape[:2] == (2, 1)  # per image, patch or pixel


def test_generic_raster_dataset_needs_path_and_bands(small_geotiff):
    cfg = compose_config(
        "train",
        [
            "dataset=raster",
            f"dataset.path={small_geotiff}",
            "dataset.bands=[B02,B08]",
            "dataset.patch_size=16",
            "dataset.val_tile=16",
            "dataset.split.gap=4",
        ],
    )
    assert cfg.generator.in_channels == 2  # interpolated from the dataset's band list
    data = instantiate(cfg.dataset, _convert_="all")
    assert data.band_names == ["B02", "B08"]


def test_overrides_reach_the_components():
    cfg = compose_config("train", ["generator=rcab", "trainer.max_steps=50", "loss.weights.adversarial=0.005"])
    assert cfg.trainer.max_steps == 50
    loss = instantiate(cfg.loss, _convert_="all")
    assert loss.adversarial_weight == 0.005


def test_unknown_group_option_fails_naming_it():
    with pytest.raises(MissingConfigException, match="generator/nosuchnet"):
        compose_config("train", ["generator=nosuchnet"])


def test_misspelt_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        compose_config("train", ["trainer.max_stepz=5"])


def test_appended_unknown_key_fails_validation_naming_it():
    cfg = compose_config("train", ["+trainer.max_stepz=5"])
    with pytest.raises(ConfigError, match="trainer.max_stepz"):
        validate_training_config(cfg)


def test_wrong_type_fails_validation_naming_it():
    cfg = compose_config("train", ["trainer.batch_size=many"])
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        validate_training_config(cfg)


def test_impossible_values_fail_validation():
    for override, key in [
        ("trainer.precision=fp8", "trainer.precision"),
        ("schedule.pretrain_steps=-1", "schedule"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("generator.scale=2", "generator.scale"),
    ]:
        with pytest.raises(ConfigError, match=key):
            validate_training_config(compose_config("train", [override]))


def test_unknown_loss_term_is_rejected():
    cfg = compose_config("train", ["+loss.weights.adversarail=0.1"])
    with pytest.raises(InstantiationException, match="adversarail"):
        instantiate(cfg.loss)


def test_unknown_component_kwarg_is_rejected():
    cfg = compose_config("train", ["+generator.n_blokcs=3"])
    with pytest.raises(InstantiationException, match="n_blokcs"):
        instantiate(cfg.generator, _convert_="all")


def test_cli_prints_composed_config():
    out = subprocess.run(
        [sys.executable, "-m", "srgan.train", "--cfg", "job", *TINY[:2]], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "_target_: srgan.models.RCABGenerator" in out.stdout
    assert "n_channels: 8" in out.stdout


def test_cli_unknown_option_exits_before_training():
    out = subprocess.run(
        [sys.executable, "-m", "srgan.train", "discriminator=nosuchdisc"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    assert "discriminator/nosuchdisc" in out.stderr


def test_resume_from_a_missing_checkpoint_fails_naming_the_key(tmp_path):
    cfg = compose_config("train", [f"resume={tmp_path}/nope"])
    with pytest.raises(ConfigError, match="resume="):
        validate_training_config(cfg)


def test_defaults_live_in_the_yaml_only_and_a_missing_key_is_named(composed):
    from omegaconf import open_dict

    cfg = composed("train")
    settings = validate_training_config(cfg)
    # The schema has no defaults of its own: what validation returns is what conf/ says.
    assert settings.trainer.max_steps == cfg.trainer.max_steps == 20000
    assert settings.trainer.health.min_prob_gap == cfg.trainer.health.min_prob_gap
    assert settings.tracking.flush_timeout == cfg.tracking.flush_timeout
    for section, key in [("trainer", "max_steps"), ("trainer.health", "patience"), ("schedule.ema", "decay")]:
        broken = composed("train")
        with open_dict(broken):
            del OmegaConf.select(broken, section)[key]
        with pytest.raises(ConfigError, match=key):
            validate_training_config(broken)
    assert composed("train").trainer.max_steps == 20000  # the cached config was not changed


def test_eval_and_infer_keys_have_a_schema_that_names_the_bad_key(composed):
    from srgan.config import EvalConfig, InferConfig, validate_entry_config
    from srgan.evaluate import GROUPS as groups

    cfg = composed("eval", ["model=somewhere"])
    options = validate_entry_config(EvalConfig, cfg, groups)
    assert (options.border, options.tile, options.lpips) == (cfg.border, cfg.tile, cfg.lpips)
    for override, named in [("+tyle=64", "tyle"), ("border=-1", "border"), ("lpips=squeeze", "lpips")]:
        with pytest.raises(ConfigError, match=named):
            validate_entry_config(EvalConfig, composed("eval", ["model=x", override]), groups)
    with pytest.raises(ConfigError, match="overlap"):
        validate_entry_config(InferConfig, composed("infer", ["model=m", "input=i", "output=o", "overlap=200"]), ())
    with pytest.raises(ConfigError, match="model"):  # ??? left unset
        validate_entry_config(EvalConfig, composed("eval"), groups)


def test_the_library_defaults_of_srgan_infer_are_conf_infer_yaml(composed):
    """``super_resolve_file``'s options and ``srgan-infer`` run alike: one set of defaults."""
    from dataclasses import fields

    from srgan.infer import InferOptions

    cfg = composed("infer", ["model=m", "input=i", "output=o"])
    shared = [f for f in fields(InferOptions) if f.name in cfg]
    assert len(shared) >= 10
    for field in shared:
        assert field.default == cfg[field.name], field.name


def test_an_uncertainty_node_builds_only_an_uncertainty_option():
    from srgan.evaluation.uncertainty import load_sampler

    node = OmegaConf.create({"_target_": "os.system", "command": "touch /tmp/srgan-pwned"})
    with pytest.raises(ValueError, match="not one of the uncertainty options"):
        load_sampler(None, node, None)
    none = OmegaConf.load(CONF_DIR / "uncertainty" / "none.yaml")
    assert load_sampler(None, none, None) is None


@pytest.mark.parametrize("group", ["uncertainty", "benchmark"])
def test_a_target_nested_in_an_option_is_refused_before_anything_is_called(group, tmp_path):
    """Hydra's recursive instantiate would call a nested _target_ before srgan saw the node (hostile
    review, issue 21: builtins.open truncated a file from benchmark.config)."""
    from srgan.evaluation.benchmark import load_benchmark
    from srgan.evaluation.uncertainty import load_sampler

    victim = tmp_path / "victim.txt"
    victim.write_text("kept")
    node = OmegaConf.load(CONF_DIR / group / ("noise.yaml" if group == "uncertainty" else "opensr_test.yaml"))
    nested = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    node = OmegaConf.merge(
        node, {"members" if group == "uncertainty" else "config": [nested] if group == "uncertainty" else {"x": nested}}
    )
    with pytest.raises(ConfigError, match=r"_target_: .* take plain values"):
        load_sampler(None, node, None) if group == "uncertainty" else load_benchmark(node, [0, 1, 2])
    assert victim.read_text() == "kept"


@pytest.mark.parametrize("option", options("benchmark"))
def test_every_benchmark_option_composes_and_builds_with_the_opensr_test_set(option, tmp_path):
    """dataset=opensr_test is evaluation data (srgan-eval), composed with every benchmark option."""
    import pickle

    import numpy as np

    from srgan.config import EvalConfig, validate_entry_config
    from srgan.evaluate import GROUPS
    from srgan.evaluation.benchmark import load_benchmark

    hr = np.full((2, 4, 64, 64), 1200, dtype=np.uint16)
    (tmp_path / "spot.pkl").write_bytes(pickle.dumps({"L2A": hr[:, :, ::4, ::4].copy(), "HRharm": hr}))
    overrides = [
        "model=x",
        f"benchmark={option}",
        "dataset=opensr_test",
        "dataset.name=spot",
        f"dataset.root={tmp_path}",
    ]
    cfg = compose_config("eval", overrides)
    validate_entry_config(EvalConfig, cfg, GROUPS)
    data = instantiate(cfg.dataset, _convert_="all")
    assert len(data.regions("test")) == 2 and data.band_names == ["B04", "B03", "B02", "B08"]
    built = load_benchmark(cfg.benchmark, data.rgb_indices)
    assert (built is None) == (option == "none")
    if option == "opensr_test":  # overrides of opensr_test.Config, added as the docs say
        cfg = compose_config("eval", [*overrides, "+benchmark.config.correctness_distance=l1"])
        assert load_benchmark(cfg.benchmark, data.rgb_indices).config.correctness_distance == "l1"

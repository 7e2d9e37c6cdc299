"""Hostile and damaged artifacts: model folders, checkpoints and weights from someone else.

Each crafted file tries to run code that would leave a marker file behind. The marker must never
appear, the load must fail, and the error must name the file that was refused.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from srgan.engine.checkpoint import CheckpointError, ModelError, load_model
from srgan.train import train
from tests.conftest import TINY, TINY_GENERATOR, compose_config, model_card


class _Plant:
    """Unpickling this writes the marker file (what a crafted pickle would do with os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def write_card(model_dir: Path, config: dict) -> Path:
    path = model_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_clean_model_folder_loads(model_dir):
    model = load_model(model_dir)
    assert model.generator(torch.rand(1, 4, 8, 8)).shape == (1, 4, 32, 32)


def _nested_attacks(marker: Path, pickle_file: Path) -> dict[str, dict]:
    """Config cards that, instantiated recursively by Hydra, would run code."""
    plant = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    return {
        "nested builtins.open": model_card({**TINY_GENERATOR, "n_blocks": plant}),
        "torch.load of a pickle": model_card({"_target_": "srgan.models.generators.torch.load", "f": str(pickle_file)}),
        "nested torch.load": model_card(
            {**TINY_GENERATOR, "reduction": {"_target_": "srgan.models.generators.torch.load", "f": str(pickle_file)}}
        ),
        "Path.write_text as normalisation": model_card(
            normalization={"_target_": "srgan.data.datasets.Path.write_text", "self": str(marker), "data": "x"}
        ),
        "shutil.copyfile nested in normalisation": model_card(
            normalization={
                "_target_": "srgan.data.normalization.LinearScale",
                "scale": {"_target_": "shutil.copyfile", "src": str(pickle_file), "dst": str(marker)},
            }
        ),
        "_partial_": model_card({**TINY_GENERATOR, "_partial_": True}),
        "_args_": model_card({**TINY_GENERATOR, "_args_": [str(marker)]}),
        "_recursive_": model_card({**TINY_GENERATOR, "_recursive_": True}),
        "unknown kwarg": model_card({**TINY_GENERATOR, "exec": "import os"}),
        "interpolation": model_card({**TINY_GENERATOR, "upsampler": "${oc.env:HOME}"}),
    }


def test_crafted_model_configs_run_nothing_and_name_the_file(model_dir, tmp_path):
    marker = tmp_path / "pwned"
    pickle_file = tmp_path / "crafted.pkl"
    pickle_file.write_bytes(pickle.dumps(_Plant(marker)))
    for name, config in _nested_attacks(marker, pickle_file).items():
        path = write_card(model_dir, config)
        with pytest.raises(ModelError) as err:
            load_model(model_dir)
        assert str(path) in str(err.value), name
        assert not marker.exists(), f"{name}: code ran"


@pytest.mark.parametrize(
    "damage", ["truncated", "empty", "garbage header", "wrong tensors"], ids=lambda d: d.replace(" ", "_")
)
def test_damaged_model_weights_are_an_error_naming_the_file(model_dir, damage):
    weights = model_dir / "generator.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "garbage header":
        weights.write_bytes(b"\xff" * 8 + data[8:])
    else:
        from safetensors.torch import save_file

        save_file({"head.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(ModelError, match=str(weights)):
        load_model(model_dir)


def test_damaged_model_config_is_an_error_naming_the_file(model_dir):
    path = model_dir / "config.yaml"
    path.write_text("generator: [unclosed\n")
    with pytest.raises(ModelError, match=str(path)):
        load_model(model_dir)
    path.write_text(yaml.safe_dump({"generator": dict(TINY_GENERATOR)}))
    with pytest.raises(ModelError, match="data"):
        load_model(model_dir)


@pytest.mark.slow
def test_srgan_infer_and_eval_refuse_a_crafted_model_folder(model_dir, small_geotiff, tmp_path):
    marker = tmp_path / "pwned"
    write_card(model_dir, _nested_attacks(marker, tmp_path / "x.pkl")["nested builtins.open"])
    for cmd in (
        ["srgan.infer", f"model={model_dir}", f"input={small_geotiff}", f"output={tmp_path / 'sr.tif'}"],
        ["srgan.evaluate", f"model={model_dir}", f"output={tmp_path / 'eval'}"],
    ):
        out = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=300)
        assert out.returncode != 0, out.stdout
        assert str(model_dir / "config.yaml") in out.stderr, out.stderr[-2000:]
        assert not marker.exists(), f"{cmd[0]}: code ran"
    assert not (tmp_path / "sr.tif").exists()


# -- checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A real run folder whose last checkpoint is step 2 of 4 (pretraining only, fast)."""
    root = tmp_path_factory.mktemp("trained")
    overrides = TINY + [
        "trainer.max_steps=2",
        "trainer.ckpt_every=2",
        "trainer.val_every=0",
        f"tracking.uri=sqlite:///{root}/mlruns.db",
        f"tracking.artifact_location={root}/art",
        "tracking.experiment_name=hostile",
    ]
    train(compose_config("train", overrides), root / "run")
    return root / "run"


def resume_overrides(run: Path) -> list[str]:
    root = run.parent
    return TINY + [
        "trainer.max_steps=4",
        "trainer.val_every=0",
        f"tracking.uri=sqlite:///{root}/mlruns.db",
        f"tracking.artifact_location={root}/art",
        "tracking.experiment_name=hostile",
        f"resume={run}",
    ]


@pytest.fixture
def run_copy(trained_checkpoint, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_checkpoint, run)
    return run


def _resume(run: Path) -> None:
    train(compose_config("train", resume_overrides(run)), run)


def step_dir(run: Path) -> Path:
    return run / "checkpoints" / "step-00000002"


@pytest.mark.slow
def test_checkpoint_holds_no_pickle_and_resumes(run_copy):
    names = {p.name for p in step_dir(run_copy).iterdir()}
    assert not any(n.endswith((".pkl", ".bin", ".pt", ".pth")) for n in names), names
    for piece in ("generator", "discriminator", "optimizer_g", "optimizer_d", "ema", "train_state", "rng_rank0"):
        assert {f"{piece}.json", f"{piece}.safetensors"} <= names
    result = train(compose_config("train", resume_overrides(run_copy)), run_copy)
    assert result["step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_pickle_in_a_checkpoint_is_refused_and_never_loaded(run_copy, tmp_path, name):
    marker = tmp_path / "pwned"
    planted = step_dir(run_copy) / name
    planted.write_bytes(pickle.dumps(_Plant(marker)))
    with pytest.raises(CheckpointError, match=name):
        _resume(run_copy)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, damage",
    [
        ("rng_rank0.json", "missing"),
        ("rng_rank0.safetensors", "missing"),
        ("rng_rank0.json", "truncated"),
        ("generator.safetensors", "truncated"),
        ("optimizer_g.safetensors", "garbage"),
        ("train_state.json", "edited"),
        ("checkpoint.json", "garbage"),
    ],
)
def test_a_missing_or_damaged_piece_is_an_error_naming_the_file(run_copy, name, damage):
    path = step_dir(run_copy) / name
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 4)
    else:
        state = json.loads(path.read_text())
        state["step"] = 999
        path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        _resume(run_copy)


@pytest.mark.slow
def test_a_consistently_forged_train_state_cannot_set_arbitrary_attributes(run_copy):
    """Even with the marker's hashes rewritten to match, the loaded pieces are checked."""
    from srgan.engine.checkpoint import _sha256

    directory = step_dir(run_copy)
    path = directory / "train_state.json"
    state = json.loads(path.read_text())
    state["__class__"] = "os.system"
    path.write_text(json.dumps(state))
    marker = json.loads((directory / "checkpoint.json").read_text())
    marker["files"]["train_state.json"] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    (directory / "checkpoint.json").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="train_state.json"):
        _resume(run_copy)

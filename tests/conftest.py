"""Shared fixtures: Hydra composition of the real configs, shrunk for the CPU, and small GeoTIFFs."""

from __future__ import annotations

import copy
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from rasterio.crs import CRS

from srgan.config import CONF_DIR

# Under pytest-xdist (`make test`) the workers share the cores: each gets its share of threads, for
# torch in the worker and, through OMP_NUM_THREADS, for the commands its tests start. Two workers of
# two threads each on two cores only take turns. (Set here, before a test imports torch.)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Widths and step counts small enough for a CPU test, large enough to exercise every phase:
# pretraining (steps 0-1), the adversarial ramp (2-3), full weight after.
TINY = [
    "experiment=demo",
    "generator.n_channels=8",
    "generator.n_blocks=1",
    "generator.reduction=4",
    "discriminator.base_channels=8",
    "discriminator.n_stages=2",
    "discriminator.head_features=16",
    "trainer.max_steps=6",
    "trainer.batch_size=2",
    "trainer.log_every=1",
    "trainer.val_every=3",
    "trainer.progress=false",
    "schedule.pretrain_steps=2",
    "schedule.ramp.steps=2",
]


def compose_config(name: str = "train", overrides: list[str] | tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="package")
def composed():
    """``compose_config`` composing each distinct (name, overrides) once for the whole test package;
    every call returns a deep copy, so a test may change what it gets."""
    cache: dict[tuple[str, tuple[str, ...]], DictConfig] = {}

    def get(name: str = "train", overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
        key = (name, tuple(overrides))
        if key not in cache:
            cache[key] = compose_config(name, overrides)
        return copy.deepcopy(cache[key])

    return get


def tracked_tiny(tmp: Path) -> list[str]:
    """TINY plus tracking into a private SQLite store under ``tmp``."""
    return TINY + [
        f"tracking.uri=sqlite:///{tmp}/mlruns.db",
        f"tracking.artifact_location={tmp}/mlartifacts",
        "tracking.experiment_name=test",
    ]


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """TINY plus tracking into a private SQLite store under tmp_path."""
    return tracked_tiny(tmp_path)


def train_tracked(tmp: Path, steps: int):
    """A TINY run of ``steps`` steps under ``tmp``, tracked in its own SQLite store: the run folder,
    its MLflow run id, the store's URI and the overrides (for module fixtures that start from a run)."""
    from types import SimpleNamespace

    from srgan.train import train

    overrides = tracked_tiny(tmp)
    result = train(compose_config("train", overrides + [f"trainer.max_steps={steps}"]), tmp / "run")
    return SimpleNamespace(
        tmp=tmp,
        uri=f"sqlite:///{tmp}/mlruns.db",
        overrides=overrides,
        run_dir=Path(result["run_dir"]),
        run_id=result["run_id"],
    )


def write_geotiff(path: Path, data: np.ndarray, names: list[str] | None, pixel: float = 10.0) -> Path:
    bands, rows, cols = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=cols,
        height=rows,
        count=bands,
        dtype=data.dtype,
        crs=CRS.from_epsg(32618),
        transform=Affine(pixel, 0, 435740.0, 0, -pixel, 4179460.0),
    ) as dst:
        dst.write(data)
        if names:
            dst.descriptions = tuple(names)
    return path


@pytest.fixture
def small_geotiff(tmp_path: Path) -> Path:
    """A 4-band uint16 GeoTIFF with band names, smooth enough that SR is meaningful."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:192]
    base = 1500 + 800 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    data = np.stack([base + 100 * b + rng.normal(0, 20, base.shape) for b in range(4)]).astype(np.uint16)
    return write_geotiff(tmp_path / "small.tif", data, ["B04", "B03", "B02", "B08"])


TINY_GENERATOR = {
    "_target_": "srgan.models.RCABGenerator",
    "in_channels": 4,
    "out_channels": 4,
    "scale": 4,
    "n_channels": 8,
    "n_blocks": 1,
    "reduction": 4,
}


def model_card(generator: dict | None = None, normalization: dict | None = None, dtype: str = "uint16") -> dict:
    """A released model's config.yaml as srgan writes it, for the tiny 4-band x4 RCAB generator."""
    return {
        "generator": generator or dict(TINY_GENERATOR),
        "data": {
            "scale": 4,
            "bands": ["B04", "B03", "B02", "B08"],
            "band_names": ["B04", "B03", "B02", "B08"],
            "dtype": dtype,
            "normalization": normalization
            or {"_target_": "srgan.data.normalization.LinearScale", "scale": 10000.0, "offset": 0.0},
        },
        "source": {"mlflow_run_id": None, "step": 0, "weights": "EMA generator"},
    }


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An exported (untrained) tiny generator: generator.safetensors + config.yaml."""
    from srgan.engine.checkpoint import export_model
    from srgan.models import RCABGenerator

    kwargs = {k: v for k, v in TINY_GENERATOR.items() if k != "_target_"}
    return export_model(RCABGenerator(**kwargs), model_card(), tmp_path / "model")


# -- waiting on other processes ------------------------------------------------------------------
# No wall-clock deadlines: a wait ends on an event (the thing waited for, or the process ending),
# and the per-test timeout in setup.cfg is the only clock, so a slow machine cannot fail a test.


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    """Return once ``condition()`` holds; fail as soon as ``proc`` ends without it."""
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        time.sleep(0.01)


class OutputWatch:
    """Collects a process's text output on a thread; :meth:`wait_for` blocks until a line holds a
    text or the output ends (the process closed it)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, text: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._ended or any(text in line for line in self.lines))
            if not any(text in line for line in self.lines):
                pytest.fail(f"the output ended without {text!r}:\n{''.join(self.lines)[-3000:]}")

"""Reading finished runs back from MLflow (notebooks/02_compare_runs): experiments, runs, image grids.

A missing store or experiment is an error that names it, the tracking URI, and the command that
makes it (``make demo``, ``make sweep SWEEP=...``, ``srgan-train ...``), read from ``conf/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from srgan.config import CONF_DIR
from srgan.viz import GRID_FOLDER

# Where validation grids were logged before GRID_FOLDER: MLflow's ``log_image(key=...)`` names
# them ``images/val_grid+step+<step>+timestamp+...png`` ('%' instead of '+' in older MLflow).
_LEGACY_GRID = re.compile(r"^images/val_grid[+%]step[+%](\d+)[+%].*\.png$")
_GRID = re.compile(rf"^{GRID_FOLDER}/val_grid_step(\d+)\.png$")


class RunsError(LookupError):
    """What was asked for is not in the MLflow store; the message says how to make it."""


def _experiment_name(path: Path) -> str | None:
    tracking = OmegaConf.load(path).get("tracking")
    return tracking.get("experiment_name") if tracking is not None else None


def how_to_make(experiment: str, conf_dir: Path = CONF_DIR) -> str:
    """The command that creates MLflow experiment ``experiment``, from the configs that name it."""
    for path in sorted((conf_dir / "sweep").glob("*.yaml")):
        if _experiment_name(path) == experiment:
            return f"`make sweep SWEEP={path.stem}` (or `srgan-train sweep={path.stem}`)"
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        if _experiment_name(path) == experiment:
            make = "`make demo` (or " if path.stem == "demo" else "("
            return f"{make}`srgan-train experiment={path.stem}`)"
    if experiment == OmegaConf.load(conf_dir / "tracking" / "mlflow.yaml").get("experiment_name"):
        return "`srgan-train` (any run without an experiment= or tracking.experiment_name= override)"
    return f"`srgan-train experiment=demo tracking.experiment_name={experiment}` (or any run with that name)"


def tracking_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; a ``sqlite:///`` file that does not exist is an error (MLflow
    would silently create an empty store there)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():
            raise RunsError(
                f"no MLflow store at {path.resolve()} (tracking URI {uri}): nothing has been tracked there yet. "
                "Run `make demo` or `srgan-train experiment=demo` from the project root first, or set "
                "MLFLOW_TRACKING_URI to the store your runs went to."
            )
    return MlflowClient(uri)


def find_experiment(client: Any, name: str) -> Any:
    """The MLflow experiment ``name``, or a :class:`RunsError` naming it, the URI and how to make it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment
    known = sorted(e.name for e in client.search_experiments())
    raise RunsError(
        f"MLflow experiment {name!r} does not exist at {client.tracking_uri}. Make it with {how_to_make(name)}, "
        f"or set SRGAN_EXPERIMENT to one that exists: {', '.join(known) or '(none)'}."
    )


def training_runs(client: Any, experiment: Any) -> list[Any]:
    """The experiment's training runs (those that logged ``train/l1``; not a sweep's parent run)."""
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "train/l1" in r.data.metrics]
    if not runs:
        raise RunsError(
            f"MLflow experiment {experiment.name!r} at {client.tracking_uri} has no training run that logged "
            f"train/l1 yet (a sweep's parent run logs none). Make one with {how_to_make(experiment.name)}."
        )
    return runs


def grid_step(artifact_path: str) -> int | None:
    """The generator step of a validation grid artifact (either naming), or None if it is not one."""
    match = _GRID.match(artifact_path) or _LEGACY_GRID.match(artifact_path)
    return int(match.group(1)) if match else None


def latest_grid(client: Any, run_id: str) -> str | None:
    """The artifact path of the run's validation grid of the highest step, or None without one.

    By step number, not by name: ``images/val_grid+step+750+...`` sorts after ``...+step+1250+...``.
    """
    grids = {}
    for folder in (GRID_FOLDER, "images"):
        for info in client.list_artifacts(run_id, folder):
            step = grid_step(info.path)
            if step is not None:
                grids.setdefault(step, info.path)
    return grids[max(grids)] if grids else None

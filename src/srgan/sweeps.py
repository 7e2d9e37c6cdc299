"""Hydra multirun sweeps tracked in MLflow: one parent run per sweep, one child run per job.

The callback is named in ``conf/train.yaml`` (``hydra.callbacks``), so every multirun gets it: a
``conf/sweep/`` grid, an Optuna search or an ad-hoc ``srgan-train -m a=1,2``. At the start it
creates the parent run (tagged with the sweep id and the grid) and hands its id to the jobs through
the environment; each job's run is tagged ``mlflow.parentRunId`` (MLflow nests it under the parent),
the sweep id, its overrides and the git commit, and is named from its overrides. At the end the
parent is marked FAILED if any child failed, FINISHED otherwise.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from srgan.tracking import get_or_create_experiment, open_client

if TYPE_CHECKING:  # imported where used: srgan.train imports this module (see srgan.tracking)
    from mlflow.tracking import MlflowClient

PARENT_ENV = "SRGAN_SWEEP_PARENT_RUN"
SWEEP_ENV = "SRGAN_SWEEP_ID"


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = os.path.basename(str(config.hydra.sweep.dir).rstrip("/"))
        t = config.tracking
        self.client = open_client(t.uri)
        experiment_id = get_or_create_experiment(self.client, t.uri, t.experiment_name, t.get("artifact_location"))
        grid = OmegaConf.to_container(config.hydra.sweeper.get("params") or {}, resolve=False)
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep-{sweep_id}",
            tags={
                "sweep_id": sweep_id,
                "sweep_grid": str(grid),
                "sweep_overrides": " ".join(config.hydra.overrides.task) or "(none)",
                "sweep_dir": str(config.hydra.sweep.dir),
            },
        )
        self.parent = run.info.run_id
        os.environ[PARENT_ENV], os.environ[SWEEP_ENV] = self.parent, sweep_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.client is None or self.parent is None:
            return
        parent = self.client.get_run(self.parent)
        children = self.client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent}'"
        )
        failed = [c.info.run_id for c in children if c.info.status != "FINISHED"]
        self.client.set_tag(self.parent, "sweep_jobs", str(len(children)))
        self.client.set_tag(self.parent, "sweep_failed_jobs", str(len(failed)))
        self.client.set_terminated(self.parent, "FAILED" if failed else "FINISHED")
        for key in (PARENT_ENV, SWEEP_ENV):
            os.environ.pop(key, None)


def job_name(overrides: list[str]) -> str | None:
    """A sweep job's run name: its overrides without the bookkeeping ones (tracking, hydra, sweep)."""
    shown = [o for o in overrides if not o.lstrip("+~").startswith(("tracking.", "hydra.", "sweep="))]
    return ",".join(shown) or None


def sweep_tags() -> dict[str, str]:
    """Tags that put a training run under its sweep's parent run (empty outside a sweep)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return {}
    return {"mlflow.parentRunId": parent, "sweep_id": os.environ.get(SWEEP_ENV, "")}


def record_failed_job(
    config: DictConfig, run_dir: str, overrides: list[str], error: BaseException, git_commit: str | None = None
) -> None:
    """Make a job that failed before its MLflow run existed (e.g. a bad value) visible as a FAILED run."""
    t = config.tracking
    client = open_client(t.uri)
    experiment_id = get_or_create_experiment(client, t.uri, t.experiment_name, t.get("artifact_location"))
    existing = client.search_runs([experiment_id], filter_string=f"tags.run_dir = '{run_dir}'")
    if existing:
        return
    tags = {
        **sweep_tags(),
        "run_dir": run_dir,
        "overrides": " ".join(overrides),
        "git_commit": git_commit or "unknown",
        "error": str(error)[:5000],
    }
    run = client.create_run(experiment_id, run_name=job_name(overrides), tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")

"""Hydra multirun sweeps tracked in MLflow: one parent run per sweep, one child run per job.

The callback is named in ``conf/train.yaml`` (``hydra.callbacks``), so every multirun gets it: a
``conf/sweep/`` grid, an Optuna search or an ad-hoc ``srgan-train -m a=1,2`` (whose grid is only on
the command line: Hydra's basic sweeper then has ``params: null``). At the start it creates the
parent run in the configured experiment (artifacts under ``tracking.artifact_location``), tagged
with the sweep id and the grid, and hands its id and the swept keys to the jobs through the
environment; each job's run is tagged ``mlflow.parentRunId`` (MLflow nests it under the parent),
the sweep id, its overrides and the git commit, and is named from its swept overrides. At the end
the parent is marked FAILED if any child failed, FINISHED otherwise; KILLED if a signal stopped it.

A sweep that varies settings which act only in the adversarial phase (``loss.weights.adversarial``,
``discriminator``, ``schedule.optimizer_d`` ...) while ``trainer.max_steps <= schedule.pretrain_steps``
would train identical models: it is refused before any job starts, naming the keys and the numbers.
Where those numbers depend on a swept group (``experiment=a,b``), each job checks itself and such
a job fails (``srgan.train``). A single run with such settings only gets a warning.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from srgan.tracking import get_or_create_experiment, open_client

if TYPE_CHECKING:  # imported where used: srgan.train imports this module (see srgan.tracking)
    from hydra.core.override_parser.types import Override
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT_ENV = "SRGAN_SWEEP_PARENT_RUN"
SWEEP_ENV = "SRGAN_SWEEP_ID"
KEYS_ENV = "SRGAN_SWEEP_KEYS"
URI_ENV = "SRGAN_SWEEP_TRACKING_URI"
STUDY_ENV = "SRGAN_SWEEP_OPTUNA_STUDY"
_ENV = (PARENT_ENV, SWEEP_ENV, KEYS_ENV, URI_ENV, STUDY_ENV)

# Config keys (and groups) read only once the adversarial phase has started (step >= pretrain_steps).
ADVERSARIAL_ONLY = (
    "loss.weights.adversarial",
    "loss.adversarial",
    "discriminator",
    "schedule.optimizer_d",
    "schedule.lr_d",
    "schedule.discriminator",
    "schedule.ramp",
    "trainer.fused_gan_step",
    "trainer.health",
)
# Groups that may set trainer.max_steps / schedule.pretrain_steps: swept, only the jobs can tell.
_PHASE_GROUPS = ("experiment", "trainer", "schedule", "sweep")


class SweepRefused(SystemExit):
    """A multirun that must not start. A ``SystemExit``: Hydra turns an exception raised in a
    callback into a warning and goes on; this ends the command with the message, exit status 1."""


def _parse(overrides: list[str]) -> list[Override]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def is_adversarial_only(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ADVERSARIAL_ONLY)


def inert_adversarial_settings(overrides: list[str], max_steps: int, pretrain_steps: int) -> list[str]:
    """The keys among ``overrides`` that act only in the adversarial phase, if that phase never starts
    (``max_steps <= pretrain_steps``: steps 0 .. max_steps-1 are all pretraining); else none."""
    if max_steps > pretrain_steps:
        return []
    keys = [o.key_or_group for o in _parse(overrides) if not o.is_hydra_override()]
    return list(dict.fromkeys(k for k in keys if is_adversarial_only(k)))


def sweep_grid(config: DictConfig) -> dict[str, str]:
    """What a multirun sweeps, key -> values as written: the sweeper's ``params`` (a conf/sweep grid,
    an Optuna search space; None for an ad-hoc ``-m``) and the sweep overrides of the command line."""
    params = config.hydra.sweeper.get("params")
    grid = {str(k): str(v) for k, v in (OmegaConf.to_container(params) if params is not None else {}).items()}
    for override in _parse(list(config.hydra.overrides.task)):
        if override.is_sweep_override() and not override.is_hydra_override():
            grid[override.key_or_group] = override.input_line.split("=", 1)[1]
    return grid


def _values(key: str, grid: dict[str, str], config: DictConfig) -> list[int] | None:
    """The integer values ``key`` takes in the sweep; None where they cannot be listed (an interval)."""
    if key not in grid:
        value = OmegaConf.select(config, key)
        return [int(value)] if isinstance(value, int) else None
    (override,) = _parse([f"{key}={grid[key]}"])
    try:
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    except HydraException:
        return None
    return [int(v) for v in values] if all(isinstance(v, int) for v in values) else None


def refuse_identical_jobs(config: DictConfig, grid: dict[str, str]) -> None:
    """Raise :class:`SweepRefused` when the grid varies adversarial-only settings and a combination of
    ``trainer.max_steps`` and ``schedule.pretrain_steps`` in it never reaches the adversarial phase."""
    inert = [key for key in grid if is_adversarial_only(key)]
    if not inert or any(group in grid for group in _PHASE_GROUPS):
        return
    max_steps, pretrain = _values("trainer.max_steps", grid, config), _values("schedule.pretrain_steps", grid, config)
    if max_steps is None or pretrain is None:
        return
    short = sorted({(m, p) for m in max_steps for p in pretrain if m <= p})
    if not short:
        return
    numbers = ", ".join(f"trainer.max_steps={m} <= schedule.pretrain_steps={p}" for m, p in short)
    swept = ", ".join(f"{key} ({grid[key]})" for key in inert)
    raise SweepRefused(
        f"srgan-train: sweep refused: it varies {swept}, which act only in the adversarial phase, but "
        f"{numbers}: that phase never starts, so jobs that differ only there would train identical models. "
        "Raise trainer.max_steps above schedule.pretrain_steps (or lower schedule.pretrain_steps)."
    )


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_id = os.path.basename(str(config.hydra.sweep.dir).rstrip("/"))
        grid = sweep_grid(config)
        refuse_identical_jobs(config, grid)
        t = config.tracking
        # An Optuna search: its study (shared by every worker of a sweep=optuna_shared) tags each run.
        study = (
            config.hydra.sweeper.get("study_name") if "optuna" in str(config.hydra.sweeper.get("_target_")) else None
        )
        try:
            self.client = open_client(t.uri)
            experiment_id = get_or_create_experiment(self.client, t.uri, t.experiment_name, t.get("artifact_location"))
            run = self.client.create_run(
                experiment_id,
                run_name=f"sweep-{sweep_id}",
                tags={
                    "sweep_id": sweep_id,
                    "sweep_grid": str(grid),
                    "sweep_overrides": " ".join(config.hydra.overrides.task) or "(none)",
                    "sweep_dir": str(config.hydra.sweep.dir),
                    "sweep_pid": str(os.getpid()),
                    **({"optuna_study": str(study)} if study else {}),
                },
            )
        except Exception as err:  # noqa: BLE001 - any failure: no sweep without its parent run
            raise SweepRefused(
                f"srgan-train: the sweep's MLflow parent run could not be created in {t.uri} "
                f"(experiment {t.experiment_name!r}): {type(err).__name__}: {err}"
            ) from err
        self.parent = run.info.run_id
        os.environ.update(
            {PARENT_ENV: self.parent, SWEEP_ENV: sweep_id, KEYS_ENV: json.dumps(list(grid)), URI_ENV: str(t.uri)}
        )
        if study:
            os.environ[STUDY_ENV] = str(study)

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
        for key in _ENV:
            os.environ.pop(key, None)


def end_interrupted_sweep(signal_name: str) -> None:
    """After SIGINT / SIGTERM stopped a multirun: mark its parent run KILLED (nothing outside a sweep)."""
    _end_sweep_early("KILLED", "sweep_interrupted", signal_name)


def end_failed_sweep(reason: str) -> None:
    """After the sweep itself failed (a launcher that could not submit, a sweeper error; not a job,
    which is recorded and passed over): mark its parent run FAILED with ``reason`` (nothing outside a sweep)."""
    _end_sweep_early("FAILED", "sweep_error", reason[:5000])


def _end_sweep_early(status: str, tag: str, value: str) -> None:
    parent, uri = os.environ.get(PARENT_ENV), os.environ.get(URI_ENV)
    if not (parent and uri):
        return
    try:
        client = open_client(uri)
        client.set_tag(parent, tag, value)
        client.set_terminated(parent, status)
    except Exception as err:  # noqa: BLE001 - the command is exiting; say what was left undone
        log.warning("could not mark the sweep's parent run %s %s in %s: %s", parent, status, uri, err)
    for key in _ENV:
        os.environ.pop(key, None)


def job_name(overrides: list[str], keys: list[str] | None = None) -> str | None:
    """A sweep job's run name: its overrides of the swept ``keys`` (``loss.weights.adversarial=0.01``),
    or, without keys, all its overrides but the bookkeeping ones (tracking, hydra, sweep)."""
    if keys:
        swept = [o.input_line for o in _parse(overrides) if o.key_or_group in keys]
        if swept:
            return ",".join(swept)
    shown = [o for o in overrides if not o.lstrip("+~").startswith(("tracking.", "hydra.", "sweep="))]
    return ",".join(shown) or None


def sweep_keys() -> list[str]:
    """The keys the current sweep varies (empty outside a sweep)."""
    return json.loads(os.environ.get(KEYS_ENV, "[]"))


def sweep_tags() -> dict[str, str]:
    """Tags that put a training run under its sweep's parent run (empty outside a sweep)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return {}
    tags = {"mlflow.parentRunId": parent, "sweep_id": os.environ.get(SWEEP_ENV, "")}
    if os.environ.get(STUDY_ENV):
        tags["optuna_study"] = os.environ[STUDY_ENV]
    return tags


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
    run = client.create_run(experiment_id, run_name=job_name(overrides, sweep_keys()), tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")

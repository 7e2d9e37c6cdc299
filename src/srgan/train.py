"""``srgan-train``: compose a run from config groups, train it, track it in MLflow, export the model.

srgan-train experiment=demo generator.n_blocks=8 loss.weights.adversarial=0.005
srgan-train init_from=outputs/demo/<run> loss.weights.adversarial=0.005   # a new run from trained weights
srgan-train --cfg job            # print the composed config and exit
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srgan.config import CONF_DIR, ConfigError, validate_training_config
from srgan.sweeps import (
    end_failed_sweep,
    end_interrupted_sweep,
    inert_adversarial_settings,
    job_name,
    record_failed_job,
    sweep_keys,
    sweep_tags,
)
from srgan.tracking import flatten

# torch, Accelerate, the engine and the losses (torchvision, torchmetrics, scipy) are imported in the
# functions that train: `srgan-train --help`, `--cfg job` and a refused sweep start in a second.
if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# Seconds an interrupted run waits for the tracking server before spooling what is left.
INTERRUPT_FLUSH_TIMEOUT = 10.0
# Accelerate reports every file of every checkpoint at INFO; keep the console for our own messages.
logging.getLogger("accelerate").setLevel(logging.WARNING)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _has_accelerator() -> bool:
    # Without one, Accelerate forms a (gloo) process group under `accelerate launch --multi_gpu`
    # only when told cpu=True; otherwise every process silently trains alone.
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _sweep_run_name() -> str | None:
    """In a multirun, a job's run is named after its swept overrides (``loss.weights.adversarial=0.01,...``)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return None
    return job_name(_overrides(), sweep_keys())


def _default_run_name(cfg: DictConfig, dataset: str) -> str:
    """Outside a sweep: generator, data and start time (MLflow's random names repeat under a fixed seed).

    A run on one's own rasters (``dataset=raster``, name left at ``raster``) is named after the file's
    stem (``rcab-naip_2019-...``; ``+N`` for N more files)."""
    generator = cfg.generator._target_.rsplit(".", 1)[-1].lower().removesuffix("generator") or "generator"
    path = cfg.dataset.get("path") if dataset == "raster" else None
    if path:
        paths = [path] if isinstance(path, str) else list(path)
        dataset = Path(str(paths[0])).stem + (f"+{len(paths) - 1}" if len(paths) > 1 else "")
    return f"{generator}-{dataset}-{time.strftime('%m%d-%H%M%S')}"


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "resume")


def _resolve_resume(resume: str | None, run_dir: Path) -> tuple[Path | None, Path]:
    """The checkpoint to continue from and the run folder to write into."""
    from srgan.engine.checkpoint import find_checkpoint

    if resume is None:
        return None, run_dir
    if resume == "auto":
        return find_checkpoint(run_dir), run_dir
    checkpoint = find_checkpoint(resume)
    if checkpoint is None:
        raise ConfigError(f"resume={resume!r}: no complete checkpoint there (checkpoints/step-N with checkpoint.json)")
    # Continue in the run folder that owns the checkpoint: one run, one folder, one MLflow run.
    return checkpoint, checkpoint.parent.parent


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train one run described by a composed config, writing outputs under ``run_dir``.

    SIGINT (Ctrl-C) and SIGTERM stop it at the end of the current step: a checkpoint of that step is
    written, the MLflow run ends KILLED and :class:`srgan.engine.loop.Interrupted` is raised (its
    ``report()`` is the line ``srgan-train`` prints before exiting with 130 / 143).
    """
    from srgan.engine.loop import StopSignals

    with StopSignals() as stop:
        return _train(cfg, run_dir, stop)


def adversarial_phase_check(trainer: Any, schedule: Any, overrides: list[str], is_main_process: bool = True) -> None:
    """A run whose adversarial phase never starts: warn, naming the adversarial settings among its
    ``overrides`` that have no effect; raise ``ConfigError`` for a sweep job whose swept keys are among
    them (the sweep's jobs would be identical; the sweep callback refuses most such sweeps earlier)."""
    if schedule.pretrain_steps < trainer.max_steps:
        return
    inert = inert_adversarial_settings(overrides, trainer.max_steps, schedule.pretrain_steps)
    swept = [key for key in inert if key in sweep_keys()]
    numbers = f"trainer.max_steps={trainer.max_steps} <= schedule.pretrain_steps={schedule.pretrain_steps}"
    if swept:
        raise ConfigError(
            f"this sweep varies {', '.join(swept)}, which act only in the adversarial phase, but {numbers}: "
            "that phase never starts, so these jobs train identical models"
        )
    if is_main_process:
        log.warning(
            "%s: the adversarial phase never starts%s",
            numbers,
            f"; {', '.join(inert)} set but without effect" if inert else "",
        )


def _accelerator(trainer: Any) -> Any:
    """Accelerate for this run. It keeps its state in a process-wide singleton; a Hydra multirun (or a
    test session) trains several runs in one process, each with its own precision. The process group
    is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=trainer.precision,
        cpu=trainer.cpu or not _has_accelerator(),
        gradient_accumulation_steps=trainer.grad_accumulation,
        dynamo_backend="inductor" if trainer.compile else "no",
    )


def _tracker(cfg: DictConfig, settings: Any, accelerator: Any, run_dir: Path, dataset: str) -> Any:
    from srgan.tracking import MlflowTracker

    tracking = settings.tracking
    return MlflowTracker(
        tracking.uri,
        tracking.experiment_name,
        tracking.run_name or _sweep_run_name() or _default_run_name(cfg, dataset),
        tracking.artifact_location,
        tags={
            "overrides": " ".join(_overrides()) or "(none)",
            "run_dir": str(run_dir),
            "dataset": dataset,
            "generator": cfg.generator._target_.rsplit(".", 1)[-1],
            "git_commit": _git_commit() or "unknown",
            "processes": str(accelerator.num_processes),
            # Where the main process ran: a sweep's jobs on a cluster or in worker processes.
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "precision": settings.trainer.precision,
            **sweep_tags(),
        },
        active=accelerator.is_main_process,
        log_images=tracking.log_images,
        flush_timeout=tracking.flush_timeout,
        spool_dir=run_dir,
    )


def _open_run(cfg: DictConfig, tracker: Any, checkpoint: Path | None, state: Any, run_dir: Path) -> str | None:
    """On the main process: the MLflow run (the checkpoint's own when resuming and the store has it,
    else a new one with the flattened config) and ``resolved_config.yaml``; returns its id."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "resolved_config.yaml"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if checkpoint is not None and state.run_id and tracker.attach(state.run_id, reopen=True):
        run_id = state.run_id
        changed = _changed_keys(OmegaConf.to_container(OmegaConf.load(config_file)), resolved)
        tracker.set_tags(
            {f"resumed_at_step_{state.step}": str(checkpoint), "resume_changed_keys": ", ".join(changed) or "(none)"}
        )
        if changed:
            log.warning("resumed with a config that differs from the run's in: %s", ", ".join(changed))
    else:
        if checkpoint is not None:
            log.warning("MLflow run %s of the checkpoint is not in %s; starting a new run", state.run_id, tracker.uri)
        run_id = tracker.start(flatten(resolved))
    OmegaConf.save(cfg, config_file, resolve=True)
    tracker.log_artifact(config_file)
    log.info("run dir %s, MLflow run %s (%s)", run_dir, run_id, tracker.uri)
    return run_id


def _start_weights(
    cfg: DictConfig, settings: Any, accelerator: Any, run: Any, data: Any, checkpoint: Path | None, run_dir: Path
) -> dict[str, Any] | None:
    """Where the weights start: the checkpoint resumed (``init_from`` is then ignored: the run it
    started continues), else ``init_from``'s weights, else the random initialisation. Returns
    ``init_from``'s report (:mod:`srgan.engine.init_from`), None without it."""
    from srgan.engine.checkpoint import load_checkpoint
    from srgan.engine.init_from import initialise

    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, run.pieces)
        log.info("resuming from %s at step %d", checkpoint, run.state.step)
        if settings.init_from is not None:
            log.info("init_from=%s ignored: the run continues from its checkpoint", settings.init_from)
        return None
    if settings.resume == "auto":
        start = "from init_from" if settings.init_from is not None else "from scratch"
        log.info("resume=auto: no checkpoint in %s, starting %s", run_dir, start)
    if settings.init_from is None:
        return None
    return initialise(settings, cfg, run.parts, data, lambda m: accelerator.unwrap_model(m, keep_torch_compile=False))


def _record_init(tracker: Any, report: dict[str, Any], run_dir: Path) -> None:
    """Tag the new run with its source (no parent-run link: sweeps nest runs) and keep the load
    report in the run folder (``init_from.json``) and as an artifact."""
    from srgan.engine.init_from import summary, write_report

    tags = {"init_from": report["init_from"], "init_from_report": summary(report)[:4000]}
    if report.get("source_run_id"):
        tags["init_from_run_id"] = str(report["source_run_id"])
    tracker.set_tags(tags)
    tracker.log_artifact(write_report(report, run_dir))


def _export(
    cfg: DictConfig,
    accelerator: Any,
    run: Any,
    data: Any,
    tracker: Any,
    run_dir: Path,
    run_id: str | None,
    register_as: str | None = None,
):
    """Check that every process ends with the same weights, then export the EMA generator with its card
    (an MLflow pyfunc model: :mod:`srgan.deploy`), registered under ``register_as`` if given."""
    from accelerate.utils import gather_object

    from srgan.deploy import write_mlmodel
    from srgan.engine.build import model_card, weights_fingerprint
    from srgan.engine.checkpoint import export_model

    p = run.parts
    g, d = accelerator.unwrap_model(p.generator), accelerator.unwrap_model(p.discriminator)
    prints = gather_object([weights_fingerprint(g, d, p.ema.module)])
    if len(set(prints)) != 1:
        raise RuntimeError(f"the processes ended with different weights: {prints}")
    if accelerator.is_main_process:
        (run_dir / "ranks.json").write_text(
            json.dumps({"processes": accelerator.num_processes, "weights_sha256": prints}, indent=1)
        )
        tracker.set_tags({"weights_identical_across_ranks": f"{len(prints)} processes, sha256 {prints[0][:16]}"})
        model_dir = export_model(p.ema.module, model_card(cfg, data, run_id, run.state.step), run_dir / "model")
        write_mlmodel(model_dir, len(data.band_names), data.scale)
        tracker.log_artifacts(model_dir, "model")
        if register_as:
            tracker.register_model("model", register_as)


def _explain_interrupt(err: KeyboardInterrupt, tracker: Any, run_dir: Path, state: Any) -> None:
    """What the one-line report of an :class:`srgan.engine.loop.Interrupted` needs; a signal usually
    comes with a deadline (SIGKILL after a grace period): what a tracking server has not taken by
    then is spooled into the run folder for a replay, not waited for."""
    from srgan.engine.checkpoint import find_checkpoint
    from srgan.engine.loop import Interrupted

    tracker.flush_timeout = min(tracker.flush_timeout, INTERRUPT_FLUSH_TIMEOUT)
    if isinstance(err, Interrupted):
        err.run_dir, err.run_id = run_dir, tracker.run_id
        err.step = state.step if err.step is None else err.step
        err.checkpoint = err.checkpoint or find_checkpoint(run_dir / "checkpoints")
        if _sweep_run_name() is not None:  # one job of a multirun: rerunning the command reruns them all
            err.resume_command = " ".join(["srgan-train", *_overrides(), f"resume={run_dir}"])


def _train(cfg: DictConfig, run_dir: str | Path, stop: Any) -> dict[str, Any]:
    import torch
    from accelerate.utils import broadcast_object_list, set_seed

    from srgan.engine.build import backbone_passes, build_training_run
    from srgan.engine.checkpoint import CheckpointManager
    from srgan.engine.loop import fit
    from srgan.engine.validation import validate

    settings = validate_training_config(cfg)
    trainer = settings.trainer
    adversarial_phase_check(trainer, settings.schedule, _overrides(), int(os.environ.get("RANK", "0")) == 0)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    accelerator = _accelerator(trainer)
    # Every process must write into the main process's folder, whatever its own clock said.
    checkpoint, run_dir = _resolve_resume(settings.resume, Path(run_dir).resolve())
    checkpoint, run_dir = broadcast_object_list([checkpoint, run_dir])
    set_seed(trainer.seed)

    data = instantiate(cfg.dataset, _convert_="all")
    run = build_training_run(cfg, settings, accelerator, data)
    if accelerator.is_main_process:
        for note in backbone_passes(cfg.loss, run.parts.loss.terms):
            log.info(note)
    init_report = _start_weights(cfg, settings, accelerator, run, data, checkpoint, run_dir)

    # Everything that can fail on a config value is built before a run exists in MLflow.
    val_set = data.val_dataset("val")

    def validator(model: torch.nn.Module):
        options = (trainer.val_batch_size, trainer.val_border)
        return validate(accelerator, model, val_set, data.scale, data.band_names, data.rgb_indices, *options)

    checkpoint_cfg = trainer.checkpoint
    checkpoints = CheckpointManager(
        accelerator,
        run_dir / "checkpoints",
        run.pieces,
        checkpoint_cfg.keep_last,
        checkpoint_cfg.best_metric,
        checkpoint_cfg.best_mode,
    )
    tracker = _tracker(cfg, settings, accelerator, run_dir, data.name)
    run_id, status, state = None, "FAILED", run.state
    try:
        if accelerator.is_main_process:
            run_id = _open_run(cfg, tracker, checkpoint, state, run_dir)
            if init_report is not None:
                _record_init(tracker, init_report, run_dir)
        state.run_id = run_id = broadcast_object_list([run_id])[0]
        loop = (run.loader, state, run.cadence, tracker, checkpoints, validator, run.health, stop)
        metrics = fit(accelerator, run.parts, *loop)
        _export(cfg, accelerator, run, data, tracker, run_dir, run_id, settings.tracking.register_as)
        accelerator.wait_for_everyone()
        status = "FINISHED"
    except KeyboardInterrupt as err:
        status = "KILLED"
        _explain_interrupt(err, tracker, run_dir, state)
        raise
    finally:
        tracker.finish(status)
    return {
        "run_dir": run_dir,
        "run_id": run_id,
        "step": state.step,
        "metrics": metrics,
        "is_main_process": accelerator.is_main_process,
        "health_warnings": dict(run.health.warnings),
    }


def _submitit_rendezvous() -> None:
    """Inside a submitit job of several tasks (``hydra/launcher=srgan_slurm``: one task per GPU, on one
    or more nodes), export the ``torch.distributed`` rendezvous (MASTER_ADDR/PORT, RANK, WORLD_SIZE,
    LOCAL_RANK) from the job's environment, so that Accelerate forms one process group over the job's
    tasks, as ``accelerate launch`` would. Outside submitit, or already set up: nothing."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "RANK" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # Each task sees every GPU of its node; Accelerate picks cuda:LOCAL_RANK.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    _submitit_rendezvous()
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # One failed job must not stop the sweep: its MLflow run is already marked FAILED.
        hydra_cfg = HydraConfig.get()
        try:
            result = train(cfg, hydra_cfg.runtime.output_dir)
        except Exception as err:
            log.exception("sweep job %s failed; the sweep goes on", hydra_cfg.job.num)
            record_failed_job(cfg, str(Path(hydra_cfg.runtime.output_dir).resolve()), _overrides(), err, _git_commit())
            return None
    else:
        result = train(cfg, HydraConfig.get().runtime.output_dir)
    if result["is_main_process"]:
        print(f"\nrun folder: {result['run_dir']}\nMLflow run: {result['run_id']}  (open the UI with `make mlflow-ui`)")
    # A sweeper can optimise the returned value.
    return result["metrics"].get("val/psnr")


def main() -> None:
    """Console entry point. Under ``accelerate launch`` only rank 0 lets Hydra create a run folder:
    every rank composes the config on its own, and their clocks may name different folders."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0 and not {"-m", "--multirun"} & set(sys.argv):
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled"]
    # Until a run installs its own handlers (srgan.engine.loop.StopSignals), SIGTERM stops the
    # command as Ctrl-C does. Either way: one line, exit 128 + signal number, no traceback.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        _hydra_main()
    except KeyboardInterrupt as err:  # srgan.engine.loop.Interrupted, or a signal outside a run
        name = str(err) if str(err) in signal.Signals.__members__ else "SIGINT"
        end_interrupted_sweep(name)
        if rank == 0:
            print(err.report() if hasattr(err, "report") else f"srgan-train: interrupted by {name}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 128 + signal.Signals[name]))
    except SystemExit as err:  # Hydra reports an exception of the sweep itself and exits 1
        if err.code not in (0, None):
            # e.g. a launcher that could not submit: the parent run must not stay RUNNING
            end_failed_sweep(f"srgan-train exited with status {err.code} (the error is on its console)")
        raise


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    main()

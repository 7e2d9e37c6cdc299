"""``srgan-train``: compose a run from config groups, train it, track it in MLflow, export the model.

srgan-train experiment=demo generator.n_blocks=8 loss.weights.adversarial=0.005
srgan-train --cfg job            # print the composed config and exit
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srgan.config import CONF_DIR, ConfigError, validate_training_config
from srgan.sweeps import (
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
    from torch import nn

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


def fused_gan_step(setting: Any, discriminator: nn.Module) -> bool:
    """``trainer.fused_gan_step``: true, false, or auto (on unless D has batch norm).

    The fused step (``engine.steps.gan_step``) gives the same gradients as the separate G and D
    steps, except that a batch-norm discriminator in train mode would normalise G's pass over real
    and SR images together instead of SR alone; ``auto`` keeps the separate steps for such a D.
    """
    from torch import nn

    if setting == "auto":
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"trainer.fused_gan_step must be true, false or auto, got {setting!r}")


def build_networks(cfg: DictConfig, device: torch.device) -> tuple[Any, Any, Any, Any, Any]:
    """Generator, discriminator, loss and both optimizers as a run builds them (``bench/speed.py`` too)."""
    import torch

    generator = instantiate(cfg.generator, _convert_="all")
    discriminator = instantiate(cfg.discriminator, _convert_="all")
    if cfg.trainer.channels_last:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    loss = instantiate(cfg.loss, _convert_="all").to(device)
    optimizer_g = instantiate(cfg.schedule.optimizer_g, _convert_="all")(generator.parameters())
    optimizer_d = instantiate(cfg.schedule.optimizer_d, _convert_="all")(discriminator.parameters())
    return generator, discriminator, loss, optimizer_g, optimizer_d


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


def backbone_passes(loss_cfg: DictConfig, built_terms: Iterable[str]) -> list[str]:
    """One note per built loss term that runs an ImageNet network (VGG perceptual, LPIPS): how many
    passes per image its band mapping (``rgb_bands``) costs. Such a term is many times slower than L1."""
    notes = []
    for name in built_terms:
        node = loss_cfg.terms.get(name)
        if node is None or "rgb_bands" not in node:
            continue
        bands, rgb = int(node.num_bands), node.rgb_bands
        if rgb is None:
            notes.append(
                f"loss term {name!r} runs its ImageNet network once per band: {bands} bands, {bands} passes per "
                f"image on SR and on HR, much slower than L1 (loss.terms.{name}.rgb_bands=[i,j,k]: one pass)"
            )
        else:
            notes.append(
                f"loss term {name!r} runs its ImageNet network 1 pass per image on bands {list(rgb)} as R, G, B "
                f"(of {bands} bands), slower than L1"
            )
    return notes


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def model_card(cfg: DictConfig, data: Any, run_id: str | None, step: int) -> dict[str, Any]:
    """The config saved beside released weights: how to rebuild the generator and feed it, and the
    data it was trained on (:mod:`srgan.data.card`)."""
    from srgan.data.card import dataset_record

    degradation = cfg.dataset.get("degradation")
    return {
        "generator": OmegaConf.to_container(cfg.generator, resolve=True),
        "data": {
            "scale": int(cfg.dataset.scale),
            "bands": list(data.bands),
            "band_names": list(data.band_names),
            "dtype": data.dtype,
            # The fitted object, not the config: z-score / percentile statistics travel with the model.
            "normalization": data.normalization.to_config(),
            # Real LR from another sensor may have its own units (paired_folder's lr_normalization).
            **(
                {"lr_normalization": data.lr_normalization.to_config()}
                if getattr(data, "lr_normalization", data.normalization) is not data.normalization
                else {}
            ),
            # Real LR/HR pairs (paired_folder) have no degradation: LR came from the sensor.
            "degradation": OmegaConf.to_container(degradation, resolve=True) if degradation is not None else None,
            # The data and split it trained on: srgan-eval's default, and the areas a test must avoid.
            **dataset_record(OmegaConf.to_container(cfg.dataset, resolve=True), data),
        },
        "source": {"mlflow_run_id": run_id, "step": step, "weights": "EMA generator"},
    }


def _fingerprint(*modules: nn.Module) -> str:
    """SHA-256 of the modules' weights and buffers, to prove that every process holds the same."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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


def _train(cfg: DictConfig, run_dir: str | Path, stop: Any) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import broadcast_object_list, gather_object, set_seed
    from torch.utils.data import DataLoader

    from srgan.engine.checkpoint import (
        CheckpointManager,
        checkpoint_pieces,
        export_model,
        find_checkpoint,
        load_checkpoint,
    )
    from srgan.engine.ema import EMA
    from srgan.engine.health import PROBABILISTIC_GAN_TYPES, GANHealth
    from srgan.engine.loop import Cadence, Interrupted, Parts, TrainState, fit
    from srgan.engine.schedules import AdversarialRamp, DiscriminatorSchedule, LRSchedule
    from srgan.engine.validation import validate
    from srgan.tracking import MlflowTracker

    settings = validate_training_config(cfg)
    trainer, schedule = settings.trainer, settings.schedule
    adversarial_phase_check(trainer, schedule, _overrides(), int(os.environ.get("RANK", "0")) == 0)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    # Accelerate keeps its state in a process-wide singleton; a Hydra multirun (or a test session)
    # trains several runs in one process, each with its own precision. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=trainer.precision,
        cpu=trainer.cpu or not _has_accelerator(),
        gradient_accumulation_steps=trainer.grad_accumulation,
        dynamo_backend="inductor" if trainer.compile else "no",
    )
    # Every process must write into the main process's folder, whatever its own clock said.
    checkpoint, run_dir = _resolve_resume(settings.resume, Path(run_dir).resolve())
    checkpoint, run_dir = broadcast_object_list([checkpoint, run_dir])
    set_seed(trainer.seed)

    data = instantiate(cfg.dataset, _convert_="all")
    generator, discriminator, loss, optimizer_g, optimizer_d = build_networks(cfg, accelerator.device)
    if accelerator.is_main_process:
        for note in backbone_passes(cfg.loss, loss.terms):
            log.info(note)
    lr_g = LRSchedule(optimizer_g, trainer.max_steps, **vars(schedule.lr_g), name="lr_g")
    lr_d = LRSchedule(optimizer_d, trainer.max_steps, **vars(schedule.lr_d), name="lr_d")
    ema = EMA(generator, schedule.ema.decay, schedule.ema.start_step, schedule.ema.warmup, schedule.ema.enabled)
    health = GANHealth(**vars(trainer.health), probabilistic=loss.adversarial.gan_type in PROBABILISTIC_GAN_TYPES)

    # Item i depends only on (seed, i), so resuming at data position p and skipping p batches
    # reproduces the uninterrupted order. The length only bounds what the loop can draw: generator
    # steps, extra D steps, D warm-up and skipped steps.
    d = schedule.discriminator
    batches = (trainer.max_steps * d.steps_per_g + d.warmup_steps) * trainer.grad_accumulation + 1_000_000
    loader = DataLoader(
        data.train_dataset(batches * trainer.batch_size * accelerator.num_processes, trainer.seed),
        batch_size=trainer.batch_size,
        shuffle=False,
        drop_last=True,
        num_workers=trainer.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # Starting an iterator draws a worker seed; from the global RNG that draw would happen again
        # after a resume (a new iterator) and shift every later random number (GP interpolation, noise).
        generator=torch.Generator().manual_seed(trainer.seed),
    )
    generator, discriminator, optimizer_g, optimizer_d, loader = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d, loader
    )
    ema.module.to(accelerator.device)
    state = TrainState()
    # Resume state is data srgan writes and reads itself (JSON + safetensors), never a pickle.
    pieces = checkpoint_pieces(
        accelerator,
        {"generator": generator, "discriminator": discriminator},
        {
            "optimizer_g": optimizer_g,
            "optimizer_d": optimizer_d,
            "ema": ema,
            "train_state": state,
            "lr_g": lr_g,
            "lr_d": lr_d,
            "health": health,
        },
    )
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, pieces)
        log.info("resuming from %s at step %d", checkpoint, state.step)
    elif settings.resume == "auto":
        log.info("resume=auto: no checkpoint in %s, starting from scratch", run_dir)

    # Everything that can fail on a config value is built before a run exists in MLflow.
    val_set = data.val_dataset("val")

    def validator(model: torch.nn.Module):
        return validate(
            accelerator,
            model,
            val_set,
            data.scale,
            data.band_names,
            data.rgb_indices,
            trainer.val_batch_size,
            trainer.val_border,
        )

    parts = Parts(
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer_g=optimizer_g,
        optimizer_d=optimizer_d,
        lr_g=lr_g,
        lr_d=lr_d,
        ema=ema,
        ramp=AdversarialRamp(schedule.pretrain_steps, schedule.ramp.steps, schedule.ramp.shape),
        d_schedule=DiscriminatorSchedule(d.warmup_steps, d.every, d.steps_per_g, d.holdback),
    )
    cadence = Cadence(
        trainer.max_steps,
        trainer.log_every,
        trainer.val_every,
        trainer.ckpt_every,
        trainer.grad_clip,
        trainer.max_nonfinite,
        trainer.channels_last,
        trainer.progress,
        fused_gan_step(trainer.fused_gan_step, accelerator.unwrap_model(discriminator)),
    )
    checkpoints = CheckpointManager(
        accelerator,
        run_dir / "checkpoints",
        pieces,
        trainer.checkpoint.keep_last,
        trainer.checkpoint.best_metric,
        trainer.checkpoint.best_mode,
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = MlflowTracker(
        settings.tracking.uri,
        settings.tracking.experiment_name,
        settings.tracking.run_name or _sweep_run_name() or _default_run_name(cfg, data.name),
        settings.tracking.artifact_location,
        tags={
            "overrides": " ".join(_overrides()) or "(none)",
            "run_dir": str(run_dir),
            "dataset": data.name,
            "generator": cfg.generator._target_.rsplit(".", 1)[-1],
            "git_commit": _git_commit() or "unknown",
            "processes": str(accelerator.num_processes),
            "precision": trainer.precision,
            **sweep_tags(),
        },
        active=accelerator.is_main_process,
        log_images=settings.tracking.log_images,
        flush_timeout=settings.tracking.flush_timeout,
        spool_dir=run_dir,
    )
    run_id = None
    status = "FAILED"
    try:
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            config_file = run_dir / "resolved_config.yaml"
            if checkpoint is not None and state.run_id and tracker.attach(state.run_id, reopen=True):
                run_id = state.run_id
                changed = _changed_keys(OmegaConf.to_container(OmegaConf.load(config_file)), resolved)
                tracker.set_tags(
                    {
                        f"resumed_at_step_{state.step}": str(checkpoint),
                        "resume_changed_keys": ", ".join(changed) or "(none)",
                    }
                )
                if changed:
                    log.warning("resumed with a config that differs from the run's in: %s", ", ".join(changed))
            else:
                if checkpoint is not None:
                    log.warning(
                        "MLflow run %s of the checkpoint is not in %s; starting a new run", state.run_id, tracker.uri
                    )
                run_id = tracker.start(flatten(resolved))
            OmegaConf.save(cfg, config_file, resolve=True)
            tracker.log_artifact(config_file)
            log.info("run dir %s, MLflow run %s (%s)", run_dir, run_id, tracker.uri)
        state.run_id = run_id = broadcast_object_list([run_id])[0]
        metrics = fit(accelerator, parts, loader, state, cadence, tracker, checkpoints, validator, health, stop)
        g_module = accelerator.unwrap_model(generator)
        prints = gather_object([_fingerprint(g_module, accelerator.unwrap_model(discriminator), ema.module)])
        if len(set(prints)) != 1:
            raise RuntimeError(f"the processes ended with different weights: {prints}")
        if accelerator.is_main_process:
            (run_dir / "ranks.json").write_text(
                json.dumps({"processes": accelerator.num_processes, "weights_sha256": prints}, indent=1)
            )
            tracker.set_tags({"weights_identical_across_ranks": f"{len(prints)} processes, sha256 {prints[0][:16]}"})
            model_dir = export_model(ema.module, model_card(cfg, data, run_id, state.step), run_dir / "model")
            tracker.log_artifacts(model_dir, "model")
        accelerator.wait_for_everyone()
        status = "FINISHED"
    except KeyboardInterrupt as err:
        status = "KILLED"
        # A signal usually comes with a deadline (SIGKILL after a grace period): what a tracking server
        # has not taken by then is spooled into the run folder for a replay, not waited for.
        tracker.flush_timeout = min(tracker.flush_timeout, INTERRUPT_FLUSH_TIMEOUT)
        if isinstance(err, Interrupted):
            err.run_dir, err.run_id = run_dir, tracker.run_id
            err.step = state.step if err.step is None else err.step
            err.checkpoint = err.checkpoint or find_checkpoint(run_dir / "checkpoints")
            if _sweep_run_name() is not None:  # one job of a multirun: rerunning the command reruns them all
                err.resume_command = " ".join(["srgan-train", *_overrides(), f"resume={run_dir}"])
        raise
    finally:
        tracker.finish(status)
    return {
        "run_dir": run_dir,
        "run_id": run_id,
        "step": state.step,
        "metrics": metrics,
        "is_main_process": accelerator.is_main_process,
        "health_warnings": dict(health.warnings),
    }


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
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


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    main()

"""``srgan-train``: compose a run from config groups, train it, track it in MLflow, export the model.

srgan-train experiment=demo generator.n_blocks=8 loss.weights.adversarial=0.005
srgan-train --cfg job            # print the composed config and exit
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, set_seed
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from srgan.config import CONF_DIR, validate_training_config
from srgan.engine.checkpoint import export_model
from srgan.engine.ema import EMA
from srgan.engine.loop import Cadence, TrainState, fit
from srgan.engine.schedules import AdversarialRamp
from srgan.engine.validation import validate
from srgan.losses import build_loss
from srgan.tracking import MlflowTracker, flatten

log = logging.getLogger(__name__)
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
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def model_card(cfg: DictConfig, data: Any, run_id: str | None, step: int) -> dict[str, Any]:
    """The config saved beside released weights: how to rebuild the generator and feed it."""
    return {
        "generator": OmegaConf.to_container(cfg.generator, resolve=True),
        "data": {
            "scale": int(cfg.dataset.scale),
            "bands": list(data.bands),
            "band_names": list(data.band_names),
            "dtype": data.dtype,
            "normalization": OmegaConf.to_container(cfg.dataset.normalization, resolve=True),
            "degradation": OmegaConf.to_container(cfg.dataset.degradation, resolve=True),
        },
        "source": {"mlflow_run_id": run_id, "step": step, "weights": "EMA generator"},
    }


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train one run described by a composed config, writing outputs under ``run_dir``."""
    settings = validate_training_config(cfg)
    trainer, schedule = settings.trainer, settings.schedule
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    # Accelerate keeps its state in a process-wide singleton; a Hydra multirun (or a test session)
    # trains several runs in one process, each with its own precision. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=trainer.precision, cpu=trainer.cpu or not _has_accelerator())
    # Every process must write into the main process's folder, whatever its own clock said.
    run_dir = Path(broadcast_object_list([str(Path(run_dir).resolve())])[0])
    set_seed(trainer.seed)

    data = instantiate(cfg.dataset, _convert_="all")
    generator = instantiate(cfg.generator, _convert_="all")
    discriminator = instantiate(cfg.discriminator, _convert_="all")
    loss = build_loss(cfg.loss).to(accelerator.device)
    optimizer_g = instantiate(schedule.optimizer_g, _convert_="all")(generator.parameters())
    optimizer_d = instantiate(schedule.optimizer_d, _convert_="all")(discriminator.parameters())
    ramp = AdversarialRamp(schedule.pretrain_steps, schedule.ramp.steps, schedule.ramp.shape)
    ema = EMA(generator, schedule.ema.decay, schedule.ema.start_step)

    # Exactly max_steps batches per process; item i depends only on (seed, i), so resuming at
    # step s and skipping s batches reproduces the uninterrupted data order.
    samples = trainer.max_steps * trainer.batch_size * accelerator.num_processes
    loader = DataLoader(
        data.train_dataset(samples, trainer.seed),
        batch_size=trainer.batch_size,
        shuffle=False,
        drop_last=True,
        num_workers=trainer.num_workers,
    )
    generator, discriminator, optimizer_g, optimizer_d, loader = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d, loader
    )
    ema.module.to(accelerator.device)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)
    if trainer.resume_from:
        accelerator.load_state(trainer.resume_from)
        log.info("resumed from %s at step %d", trainer.resume_from, state.step)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = MlflowTracker(
        settings.tracking.uri,
        settings.tracking.experiment_name,
        settings.tracking.run_name,
        settings.tracking.artifact_location,
        tags={
            "overrides": " ".join(_overrides()) or "(none)",
            "run_dir": str(run_dir),
            "dataset": data.name,
            "generator": cfg.generator._target_.rsplit(".", 1)[-1],
            "git_commit": _git_commit() or "unknown",
            "processes": str(accelerator.num_processes),
            "precision": trainer.precision,
        },
        active=accelerator.is_main_process,
        log_images=settings.tracking.log_images,
    )
    run_id = broadcast_object_list([tracker.start(flatten(resolved))])[0]
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "resolved_config.yaml", resolve=True)
        tracker.log_artifact(run_dir / "resolved_config.yaml")
        log.info("run dir %s, MLflow run %s (%s)", run_dir, run_id, tracker.uri)

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

    cadence = Cadence(
        trainer.max_steps, trainer.log_every, trainer.val_every, trainer.ckpt_every, trainer.grad_clip, trainer.progress
    )
    status = "FAILED"
    try:
        metrics = fit(
            accelerator,
            generator,
            discriminator,
            loss,
            optimizer_g,
            optimizer_d,
            loader,
            ema,
            ramp,
            state,
            cadence,
            tracker,
            run_dir,
            validator,
        )
        if accelerator.is_main_process:
            model_dir = export_model(ema.module, model_card(cfg, data, run_id, state.step), run_dir / "model")
            tracker.log_artifacts(model_dir, "model")
        accelerator.wait_for_everyone()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)
    return {
        "run_dir": run_dir,
        "run_id": run_id,
        "step": state.step,
        "metrics": metrics,
        "is_main_process": accelerator.is_main_process,
    }


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    result = train(cfg, HydraConfig.get().runtime.output_dir)
    if result["is_main_process"]:
        print(f"\nrun folder: {result['run_dir']}\nMLflow run: {result['run_id']}  (open the UI with `make mlflow-ui`)")
    # A sweeper can optimise the returned value.
    return result["metrics"].get("val/psnr")


def main() -> None:
    """Console entry point. Under ``accelerate launch`` only rank 0 lets Hydra create a run folder:
    every rank composes the config on its own, and their clocks may name different folders."""
    if int(os.environ.get("RANK", "0")) > 0 and not {"-m", "--multirun"} & set(sys.argv):
        sys.argv += ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled"]
    _hydra_main()


if __name__ == "__main__":
    main()

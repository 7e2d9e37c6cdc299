"""Workflow around a run: ad-hoc sweeps, sweeps that cannot differ, interruption, naming, start-up."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.conftest import TINY, compose_config

SMALL_RUN = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every"))]


def _mlflow(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


@pytest.mark.slow
def test_adhoc_multirun_gets_a_parent_run_named_children_and_the_configured_artifact_location(tmp_path, caplog):
    # `srgan-train -m ... a=1,2` without conf/sweep: Hydra's basic sweeper has `params: null`.
    uri, artifacts = f"sqlite:///{tmp_path}/mlruns.db", tmp_path / "art"
    run = [o for o in SMALL_RUN if not o.startswith("schedule.")] + ["schedule.pretrain_steps=0"]
    cmd = [sys.executable, "-m", "srgan.train", "-m", *run, "trainer.max_steps=1", "trainer.val_every=1"]
    cmd += ["loss.weights.adversarial=0.001,0.01", "tracking.experiment_name=adhoc"]
    cmd += [f"tracking.uri={uri}", f"tracking.artifact_location={artifacts}", f"hydra.sweep.dir={tmp_path}/mr/g-1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MlflowSweepCallback" not in out.stderr, out.stderr[-3000:]
    client = _mlflow(uri)
    experiment = client.get_experiment_by_name("adhoc")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "sweep_grid" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    assert parent.info.run_name == "sweep-g-1" and parent.info.status == "FINISHED"
    assert "'loss.weights.adversarial': '0.001,0.01'" in parent.data.tags["sweep_grid"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.info.run_name for c in children) == [
        "loss.weights.adversarial=0.001",
        "loss.weights.adversarial=0.01",
    ]
    assert all(c.info.status == "FINISHED" for c in children)
    assert not (tmp_path / "mlruns").exists()
    for run in (parent, *children):
        assert run.info.artifact_uri.startswith(artifacts.as_uri()), run.info.artifact_uri
    for child in children:
        assert (artifacts / child.info.run_id / "artifacts" / "model" / "generator.safetensors").is_file()

    # An experiment created elsewhere without that location (MLflow's default ./mlruns) is named, not used silently.
    from srgan.tracking import get_or_create_experiment

    with caplog.at_level(logging.WARNING, logger="srgan.tracking"):
        get_or_create_experiment(client, uri, "Default", str(artifacts))
    assert any("'Default' keeps its artifacts in" in m and str(artifacts) in m for m in caplog.messages)


def _multirun_config(overrides: list[str], sweeps: list[str], tmp_path: Path):
    """The config Hydra hands a multirun callback: composed without the sweep overrides, which stay
    in ``hydra.overrides.task`` as typed."""
    cfg = compose_config("train", overrides + [f"tracking.uri=sqlite:///{tmp_path}/mlruns.db"])
    from hydra import compose, initialize_config_dir

    from srgan.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_node = compose("train", overrides=overrides, return_hydra_config=True).hydra
    with open_dict(cfg):
        cfg.hydra = hydra_node
        cfg.hydra.overrides.task = overrides + sweeps
        cfg.hydra.sweep.dir = str(tmp_path / "multirun" / "s-1")
    return cfg


def test_a_sweep_over_adversarial_settings_that_never_reach_the_adversarial_phase_is_refused(tmp_path):
    from srgan.sweeps import PARENT_ENV, MlflowSweepCallback

    base = ["experiment=demo", "trainer.max_steps=200"]  # demo pretrains for 1000 steps
    for sweep in (["loss.weights.adversarial=0.001,0.01"], ["discriminator=srgan,unet", "generator.n_blocks=2,4"]):
        cfg = _multirun_config(base, sweep, tmp_path)
        with pytest.raises(SystemExit) as refused:
            MlflowSweepCallback().on_multirun_start(cfg)
        message = str(refused.value.code)
        swept = sweep[0].split("=")[0]
        assert swept in message and "trainer.max_steps=200" in message and "schedule.pretrain_steps=1000" in message
        assert "generator.n_blocks" not in message  # acts in pretraining too
        assert PARENT_ENV not in os.environ
    assert not (tmp_path / "mlruns.db").exists()  # refused before any run, parent included

    # The command: one line, exit status 1, no job folder, no MLflow store (the check needs no torch).
    cmd = [sys.executable, "-m", "srgan.train", "-m", *base, "loss.weights.adversarial=0.001,0.01"]
    cmd += [f"tracking.uri=sqlite:///{tmp_path}/mlruns.db", f"hydra.sweep.dir={tmp_path}/mr"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert (
        out.stderr.strip().splitlines()[-1].startswith("srgan-train: sweep refused: it varies loss.weights.adversarial")
    )
    assert not (tmp_path / "mr").exists() and not (tmp_path / "mlruns.db").exists()

    # Swept per job: only the combinations that never reach the adversarial phase are refused.
    cfg = _multirun_config(
        ["experiment=demo"], ["trainer.max_steps=500,2000", "loss.weights.adversarial=0,0.01"], tmp_path
    )
    with pytest.raises(SystemExit, match=r"trainer.max_steps=500 <= schedule.pretrain_steps=1000"):
        MlflowSweepCallback().on_multirun_start(cfg)


def test_inert_adversarial_settings_are_named_for_a_single_run_and_none_once_the_phase_starts():
    from srgan.sweeps import inert_adversarial_settings

    overrides = ["experiment=demo", "loss.weights.adversarial=0.01", "discriminator=unet", "generator.n_blocks=8"]
    assert inert_adversarial_settings(overrides, max_steps=500, pretrain_steps=1000) == [
        "loss.weights.adversarial",
        "discriminator",
    ]
    assert inert_adversarial_settings(overrides, max_steps=1001, pretrain_steps=1000) == []
    assert inert_adversarial_settings(["+schedule.discriminator.every=2"], 10, 10) == ["schedule.discriminator.every"]


def test_a_job_of_a_sweep_over_inert_adversarial_settings_fails_and_a_single_run_warns(monkeypatch, caplog):
    # The callback cannot tell when a swept group sets the step counts (experiment=a,b): each job checks.
    from srgan.config import ConfigError, validate_training_config
    from srgan.sweeps import KEYS_ENV
    from srgan.train import adversarial_phase_check

    settings = validate_training_config(compose_config("train", ["experiment=demo", "trainer.max_steps=200"]))
    job = ["experiment=demo", "trainer.max_steps=200", "loss.weights.adversarial=0.01"]
    with caplog.at_level(logging.WARNING, logger="srgan.train"):
        adversarial_phase_check(settings.trainer, settings.schedule, job)
    (warning,) = caplog.messages
    assert "trainer.max_steps=200 <= schedule.pretrain_steps=1000" in warning
    assert "loss.weights.adversarial set but without effect" in warning
    monkeypatch.setenv(KEYS_ENV, '["experiment", "loss.weights.adversarial"]')
    with pytest.raises(ConfigError, match=r"this sweep varies loss.weights.adversarial, .*trainer.max_steps=200 <= "):
        adversarial_phase_check(settings.trainer, settings.schedule, job)


def _train_cmd(run_dir: Path, tmp_path: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "srgan.train",
        *SMALL_RUN,
        "trainer.max_steps=100000",
        "trainer.val_every=1",
        "trainer.ckpt_every=0",
        "trainer.checkpoint.best_metric=null",  # the only checkpoint is the one the signal writes
        "trainer.num_threads=1",
        f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
        f"tracking.artifact_location={tmp_path}/art",
        "tracking.experiment_name=interrupt",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_with_a_checkpoint_one_line_and_exit_143(tmp_path):
    from srgan.engine.checkpoint import checkpoint_steps

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _train_cmd(run_dir, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        for line in proc.stdout:  # a validation result means a step is done and logged
            lines.append(line)
            if "val PSNR" in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    (report,) = [line for line in lines if "interrupted" in line]
    steps = checkpoint_steps(run_dir / "checkpoints")
    assert steps, text[-3000:]
    step = max(steps)
    assert f"interrupted by SIGTERM at step {step}" in report and str(steps[step]) in report
    assert f"resume={run_dir}" in report
    client = _mlflow(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("interrupt").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_id in report
    assert "val PSNR" in (run_dir / "train.log").read_text()  # validation results reach Hydra's log file


class _SignalOnValidation(logging.Handler):
    """Sends this process a signal when the loop logs its first validation result (a step is done)."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum, self.sent = signum, 0

    def emit(self, record: logging.LogRecord) -> None:
        if "val PSNR" in record.getMessage() and not self.sent:
            self.sent += 1
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
def test_ctrl_c_stops_at_the_end_of_the_step_with_a_checkpoint_and_a_killed_run(tmp_path, tiny_overrides):
    from srgan.engine.checkpoint import checkpoint_steps
    from srgan.engine.loop import Interrupted
    from srgan.train import train

    overrides = [
        *tiny_overrides,
        "trainer.max_steps=4",
        "trainer.val_every=2",
        "trainer.ckpt_every=0",
        "trainer.checkpoint.best_metric=null",  # the only checkpoint is the one the signal writes
    ]
    cfg = compose_config("train", overrides)
    trigger = _SignalOnValidation(signal.SIGINT)
    loop_log = logging.getLogger("srgan.engine.loop")
    level = loop_log.level
    loop_log.addHandler(trigger)
    loop_log.setLevel(logging.INFO)
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as stopped:
            train(cfg, tmp_path / "run")
    finally:
        loop_log.removeHandler(trigger)
        loop_log.setLevel(level)
    assert signal.getsignal(signal.SIGINT) is previous  # the run's handlers are gone with it
    err = stopped.value
    assert trigger.sent == 1 and err.signum == signal.SIGINT and err.exit_code == 130
    assert err.step == 2 and sorted(checkpoint_steps(tmp_path / "run" / "checkpoints")) == [2]
    assert err.checkpoint == checkpoint_steps(tmp_path / "run" / "checkpoints")[2]
    assert "interrupted by SIGINT at step 2" in err.report() and "\n" not in err.report()
    client = _mlflow(f"sqlite:///{tmp_path}/mlruns.db")
    assert client.get_run(err.run_id).info.status == "KILLED"

    # The command it prints continues the same run from that checkpoint.
    resumed = train(compose_config("train", [*overrides, f"resume={err.run_dir}"]), tmp_path / "elsewhere")
    assert resumed["run_id"] == err.run_id and resumed["step"] == 4
    assert client.get_run(err.run_id).info.status == "FINISHED"


def test_demo_writes_periodic_checkpoints_so_resume_auto_continues():
    cfg = compose_config("train", ["experiment=demo"])
    assert 0 < cfg.trainer.ckpt_every < cfg.trainer.max_steps
    assert cfg.trainer.max_steps % cfg.trainer.ckpt_every == 0


def test_an_own_raster_run_is_named_after_the_file():
    from srgan.train import _default_run_name

    cfg = compose_config("train", ["dataset=raster", "dataset.path=/data/naip_2019.tif", "dataset.bands=[1,2,3]"])
    assert _default_run_name(cfg, "raster").startswith("rcab-naip_2019-")
    cfg = compose_config("train", ["dataset=raster", "dataset.path=[/d/a.tif,/d/b.tif]", "dataset.bands=[1]"])
    assert _default_run_name(cfg, "raster").startswith("rcab-a+1-")
    assert _default_run_name(compose_config("train"), "s2_rgbn_x4").startswith("rcab-s2_rgbn_x4-")


def test_perceptual_terms_announce_one_backbone_pass_per_band():
    from srgan.engine.build import backbone_passes

    cfg = compose_config("train", ["loss=full", "loss.weights.perceptual=0.1", "loss.weights.lpips=0.05"])
    notes = backbone_passes(cfg.loss, ["perceptual", "lpips", "l1"])
    assert len(notes) == 2 and all("4 passes" in n and "4 bands" in n for n in notes)
    cfg = compose_config("train", ["loss=full", "loss.terms.perceptual.rgb_bands=[0,1,2]"])
    (note,) = backbone_passes(cfg.loss, ["perceptual"])
    assert "1 pass" in note and "[0, 1, 2]" in note
    assert backbone_passes(compose_config("train").loss, ["l1"]) == []


HEAVY = ("torch", "mlflow", "accelerate", "torchmetrics", "torchvision", "lpips", "matplotlib", "rasterio", "scipy")


def test_the_cli_starts_without_the_heavy_libraries():
    probe = (
        "import sys\n"
        "import srgan.train as t\n"
        f"heavy = {HEAVY!r}\n"
        "print('import', sorted(m for m in heavy if m in sys.modules))\n"
        "sys.argv = ['srgan-train', '--help']\n"
        "try:\n"
        "    t.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('help', sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "import []" in out.stdout and "help []" in out.stdout, out.stdout[-2000:]
    assert "experiment" in out.stdout  # --help printed the config groups


def test_a_signal_arriving_while_a_log_record_is_flushed_is_noted_without_a_logging_error(capfd):
    """The deferred-stop notice is written from the signal handler itself. A signal can arrive while
    the main thread is inside a log handler's flush (seen in CI: 'reentrant call inside
    BufferedWriter', then a '--- Logging error ---' traceback in the run's output); the notice must not
    go through logging there."""
    import logging
    import signal as signals

    from srgan.engine.loop import StopSignals

    stop = StopSignals()
    stop.deferred = True

    class Stream:
        flushing = False

        def write(self, text):
            if self.flushing:
                raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

        def flush(self):
            self.flushing = True
            try:
                if stop.signum is None:
                    stop._handle(signals.SIGTERM, None)  # the signal lands mid-flush
            finally:
                self.flushing = False

    handler = logging.StreamHandler(Stream())
    logger = logging.getLogger("srgan")
    logger.addHandler(handler)
    try:
        logging.getLogger("srgan.engine.loop").warning("step 1: val PSNR ...")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert stop.signum == signals.SIGTERM
    assert "Logging error" not in err and "Traceback" not in err, err
    assert "SIGTERM: stopping at the end of this step with a checkpoint" in err

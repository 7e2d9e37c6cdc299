"""Beyond one process: parallel sweep jobs (joblib), submitit jobs (local executor, and the SLURM
script the shipped cluster config submits), two Optuna workers sharing one study, and a DDP run over
two "nodes" on 127.0.0.1. Every test runs the real commands in subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY

pytestmark = pytest.mark.slow

# The tiny model and schedule of the other tests, for sweeps whose config picks the experiment.
TINY_JOB = [o for o in TINY if not o.startswith("experiment=")]
TRAIN = [sys.executable, "-m", "srgan.train"]


def _tracking(tmp: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp}/mlruns.db", f"tracking.artifact_location={tmp}/art"]


def _runs(tmp: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{tmp}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "sweep_grid" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_joblib_launcher_runs_sweep_jobs_at_once_each_nested_in_mlflow(tmp_path):
    cmd = [*TRAIN, "sweep=smoke", *TINY_JOB, "trainer.max_steps=8", *_tracking(tmp_path)]
    cmd += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/grid"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (parent,), children = _runs(tmp_path, "sweep-smoke")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_jobs"] == "2"
    assert sorted(c.info.run_name for c in children) == [
        "loss.weights.adversarial=0.0",
        "loss.weights.adversarial=0.01",
    ]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    # The jobs trained in joblib's worker processes, not in the sweep's own (how much that saves is
    # bench/sweep_jobs.py's to measure, not a test's).
    assert all(c.data.tags["pid"] != parent.data.tags["sweep_pid"] for c in children)
    assert {(tmp_path / "grid" / n / "model" / "generator.safetensors").is_file() for n in ("0", "1")} == {True}


def test_submitit_job_trains_one_ddp_run_over_its_tasks(tmp_path):
    """submitit's local executor runs the code path of a SLURM job: a job of two tasks is one DDP run."""
    cmd = [*TRAIN, "-m", *TINY, "trainer.max_steps=4", *_tracking(tmp_path), "tracking.experiment_name=sub"]
    cmd += ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10"]
    cmd += [f"hydra.sweep.dir={tmp_path}/sub"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (parent,), (child,) = _runs(tmp_path, "sub")
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["processes"] == "2"
    ranks = json.loads((tmp_path / "sub" / "0" / "ranks.json").read_text())
    assert ranks["processes"] == 2 and len(set(ranks["weights_sha256"])) == 1
    checkpoint = max((tmp_path / "sub" / "0" / "checkpoints").glob("step-*"))
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors"} <= {p.name for p in checkpoint.iterdir()}


def test_slurm_launcher_config_submits_one_task_per_gpu_and_a_failed_submission_fails_the_sweep(tmp_path):
    """The shipped cluster config through the real launcher, up to sbatch (a stand-in that records
    the script and refuses, as a cluster without capacity would)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_RECORD"\necho "sbatch: error: test" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_RECORD": str(tmp_path / "job.sh")}
    cmd = [*TRAIN, "sweep=smoke", *_tracking(tmp_path), "hydra/launcher=srgan_slurm"]
    cmd += ["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4", f"hydra.sweep.dir={tmp_path}/slurm"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode != 0 and "sbatch: error: test" in out.stderr
    script = (tmp_path / "job.sh").read_text()
    for line in (
        "#SBATCH --array=0-1%2",  # the grid's two jobs
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",  # one task per GPU
        "#SBATCH --partition=gpu",
        "#SBATCH --time=2880",
        "#SBATCH --cpus-per-task=8",
    ):
        assert line in script, script
    assert "srun" in script and "submitit.core._submit" in script
    (parent,), children = _runs(tmp_path, "sweep-smoke")
    assert parent.info.status == "FAILED" and "exited with status" in parent.data.tags["sweep_error"]
    assert children == []


def test_two_optuna_workers_share_one_study_without_losing_or_repeating_a_trial(tmp_path):
    import optuna

    journal = tmp_path / "study.journal"
    procs = []
    for worker in (1, 2):
        cmd = [*TRAIN, "sweep=optuna_shared", "hydra.sweeper.n_trials=2", *TINY_JOB, *_tracking(tmp_path)]
        cmd += [f"hydra.sweeper.storage.log_storage.file_path={journal}", f"hydra.sweep.dir={tmp_path}/w{worker}"]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="srgan-val-psnr-shared", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    keys = ("schedule.optimizer_g.lr", "loss.weights.adversarial")
    asked = {tuple(round(t.params[k], 12) for k in keys): t.value for t in trials}
    assert len(asked) == 4, "two trials got the same parameters"
    parents, children = _runs(tmp_path, "sweep-optuna-shared")
    assert len(parents) == 2 and {p.data.tags["optuna_study"] for p in parents} == {"srgan-val-psnr-shared"}
    assert len(children) == 4 and all(c.data.tags["optuna_study"] == "srgan-val-psnr-shared" for c in children)
    # Every trial of the study is exactly one MLflow run, with the value the study recorded.
    tracked = {tuple(round(float(c.data.params[k]), 12) for k in keys): c.data.metrics["val/psnr"] for c in children}
    assert tracked.keys() == asked.keys()
    assert all(tracked[k] == pytest.approx(asked[k], abs=1e-6) for k in asked)


def test_two_node_ddp_run_on_loopback_makes_one_folder_and_one_mlflow_run(tmp_path):
    """Two ``accelerate launch`` processes (gloo DDP, one per "node") form one run.

    It also carries what every DDP run must agree on (it was test_cli's one-node DDP test: the same
    process group and code path): penalties that differentiate D's DDP forward twice, accumulation
    cycles, clipping and D's holdback, and per-rank RNG state in the checkpoint.
    """
    launcher = Path(sys.executable).with_name("accelerate")
    port = _free_port()
    procs = []
    for rank in (0, 1):
        cmd = [str(launcher), "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank)]
        cmd += ["--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
        cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "srgan.train", *TINY]
        cmd += ["trainer.max_steps=4", *_tracking(tmp_path), f"hydra.run.dir={tmp_path}/runs/two-nodes"]
        cmd += ["loss.adversarial.gan_type=wgan_gp", "loss.adversarial.r1_weight=1.0"]
        cmd += ["trainer.grad_accumulation=2", "trainer.grad_clip=1.0", "schedule.discriminator.holdback=0.9"]
        # Each "node" in its own working folder, as on two machines sharing only the run folder.
        node = tmp_path / f"node{rank}"
        node.mkdir()
        procs.append(subprocess.Popen(cmd, cwd=node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["two-nodes"]
    assert not any((tmp_path / "node1").iterdir())  # the second node wrote nothing of its own
    assert outs[0][0].count("run folder:") == 1 and "run folder:" not in outs[1][0]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (only,) = client.search_runs(client.get_experiment_by_name("demo").experiment_id)
    assert only.info.status == "FINISHED" and only.data.tags["processes"] == "2"
    assert {"train/d_gp", "train/d_r1"} <= set(only.data.metrics)
    # Both ranks ended with bit-identical G, D and EMA weights (checked by the run, recorded here).
    ranks = json.loads((tmp_path / "runs" / "two-nodes" / "ranks.json").read_text())
    assert ranks["processes"] == 2 and len(set(ranks["weights_sha256"])) == 1
    assert only.data.tags["weights_identical_across_ranks"].startswith("2 processes")
    checkpoint = tmp_path / "runs" / "two-nodes" / "checkpoints" / "step-00000004"
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.glob("*.pkl")) and not list(checkpoint.glob("*.bin"))  # nothing pickled

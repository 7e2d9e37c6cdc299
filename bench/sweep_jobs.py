"""Wall time of one sweep grid run sequentially and with parallel jobs (``make sweep JOBS=N``); not a test.

    python bench/sweep_jobs.py                               # loss_weights grid, shortened, JOBS=1 vs 2
    python bench/sweep_jobs.py --rounds 3 --jobs 2 --json bench/results/sweep_jobs_cpu.json
    python bench/sweep_jobs.py --sweep smoke --overrides ""   # the 2-job smoke grid as it is

Each round runs the same command (``python -m srgan.train sweep=<grid> <overrides>``) once per
launcher, in alternating order (so that neither always runs on a warmer machine): the basic launcher
(one job after another, in one process, all cores) and ``hydra/launcher=joblib
hydra.launcher.n_jobs=N`` (N worker processes, joblib giving each cores / N threads). Every job of
every round is tracked into one throw-away SQLite store and must finish; wall time is the whole
command, start-up included, as a user would see it. Reported: each launcher's median over rounds,
every round's time, and the speed-up of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `make sweep`'s grid (adversarial x perceptual x SAM: 8 jobs) with each job cut from 200 to 40
# steps (20 of pretraining, 10 of ramp), so that a round takes minutes, not the grid's 25.
SHORT = "trainer.max_steps=40 schedule.pretrain_steps=20 schedule.ramp.steps=10 trainer.val_every=20"


def _sweep(tmp: Path, name: str, sweep: str, overrides: list[str], jobs: int) -> float:
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    cmd = [sys.executable, "-m", "srgan.train", f"sweep={sweep}", *overrides, *launcher]
    cmd += [f"tracking.uri=sqlite:///{tmp}/mlruns.db", f"tracking.artifact_location={tmp}/art"]
    cmd += [f"tracking.experiment_name=bench-{name}", f"hydra.sweep.dir={tmp}/{name}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    _check_finished(tmp, f"bench-{name}")
    return seconds


def _check_finished(tmp: Path, experiment: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    failed = [r.info.run_name for r in children if r.info.status != "FINISHED"]
    if not children or failed:
        raise SystemExit(f"{experiment}: jobs did not all finish ({len(children)} runs, failed: {failed})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="loss_weights", help="conf/sweep/<name> (default: make sweep's grid)")
    parser.add_argument("--overrides", default=SHORT, help="extra overrides for every job (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs of the joblib launcher")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    overrides = args.overrides.split()
    times: dict[str, list[float]] = {"sequential": [], f"joblib_{args.jobs}": []}
    with tempfile.TemporaryDirectory(prefix="srgan-bench-sweep-") as tmp:
        for r in range(args.rounds):
            order = list(times) if r % 2 == 0 else list(reversed(times))
            for name in order:
                jobs = 1 if name == "sequential" else args.jobs
                seconds = _sweep(Path(tmp), f"{name}-{r}", args.sweep, overrides, jobs)
                times[name].append(seconds)
                print(f"round {r}: {name:>12}  {seconds:7.1f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    parallel = f"joblib_{args.jobs}"
    result = {
        "what": f"wall time of `srgan-train sweep={args.sweep} {args.overrides}`, whole command, per launcher",
        "command": "python bench/sweep_jobs.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rounds": args.rounds,
        "seconds": times,
        "median_seconds": medians,
        "speedup_of_medians": medians["sequential"] / medians[parallel],
    }
    print("\n| launcher | median s | rounds (s) |\n|---|---:|---|")
    for name, t in times.items():
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{s:.1f}' for s in t)} |")
    print(f"\n{parallel} vs sequential: {result['speedup_of_medians']:.2f}x (medians)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

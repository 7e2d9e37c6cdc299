"""bench/speed.py runs end to end (its numbers are not asserted: benchmarks, not tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def worker(spec: dict) -> dict:
    base = {"warmup": 0, "repeats": 1, "device": "cpu", "train_batch": 2, "infer_batch": 2, "variant": "t"}
    cmd = [sys.executable, str(ROOT / "bench" / "speed.py"), "--worker", json.dumps({**base, **spec})]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_step_worker_counts_the_step_flops():
    overrides = ["generator.n_channels=16", "generator.n_blocks=2", "discriminator.base_channels=8"]
    r = worker({"kind": "train", "model": "rcab", "opts": {"overrides": overrides}})
    assert r["steps_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["adam_impl"] == "forloop"
    # G forward + backward, D on SR in the G step, D step forward + backward: a few GFLOP at this size.
    assert 0.05 < r["step_gflop"] < 20


def test_generator_and_scene_workers(tmp_path):
    overrides = ["generator.n_channels=8", "generator.n_blocks=1"]
    g = worker({"kind": "generator", "model": "rcab", "opts": {"overrides": overrides}})
    assert g["output_mpx_per_s"] > 0 and g["gflop_per_output_mpx"] > 0
    s = worker(
        {"kind": "scene", "model": "rcab", "opts": {"overrides": overrides}, "scene": 64, "scene_tile": 32}
        | {"scene_batch": 2}
    )
    assert s["tiles"] >= 4 and s["output_mpx_per_s"] > 0 and s["s2_tile_seconds_estimate"] > 0


def test_step_ab_interleaves_the_three_gan_steps(tmp_path):
    out = tmp_path / "ab.json"
    cmd = [sys.executable, str(ROOT / "bench" / "step_ab.py"), "--rounds", "1", "--batch", "2", "--json", str(out)]
    cmd += ["--srgan-shape", "--override", "generator.n_channels=8", "--override", "generator.n_blocks=1"]
    cmd += ["--override", "discriminator.base_channels=8"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"shared", "second_pass", "separate"}
    assert all(len(v["step_s_all"]) == 2 and v["step_s_median"] > 0 for v in variants.values())
    # The variants differ in how G's adversarial gradient is obtained, as labelled.
    assert variants["shared"]["g_adversarial_from_d_pass"] and not variants["second_pass"]["g_adversarial_from_d_pass"]

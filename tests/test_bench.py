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


def _roofline():
    sys.path.insert(0, str(ROOT / "bench"))
    import roofline

    return roofline


@pytest.mark.parametrize(
    "kernel,padding,bias", [(3, 1, True), (1, 0, False), (9, 4, True), (3, 0, False), (5, 1, True)]
)
def test_roofline_gemm_weight_gradient_equals_convolution_backward(kernel, padding, bias):
    import torch

    roofline = _roofline()
    x = torch.randn(2, 5, 11, 13, dtype=torch.float64)
    w = torch.randn(3, 5, kernel, kernel, dtype=torch.float64)
    out = torch.nn.functional.conv2d(x, w, padding=padding)
    g = torch.randn_like(out)
    _, dw, db = torch.ops.aten.convolution_backward(
        g, x, w, [3] if bias else None, [1, 1], [padding] * 2, [1, 1], False, [0, 0], 1, [False, True, bias]
    )
    k, p = (kernel, kernel), (padding, padding)
    call = roofline.ConvCall("G", tuple(x.shape), 3, k, (1, 1), p, (1, 1), 1, bias, True, False, False)
    mine_w, mine_b = roofline.weight_grad_gemm(g, x, call)
    torch.testing.assert_close(mine_w, dw)
    if bias:
        torch.testing.assert_close(mine_b, db)
    else:
        assert mine_b is None


def test_roofline_finds_the_convolutions_of_the_fused_step():
    import torch
    from torch import nn

    roofline = _roofline()
    from srgan.models.discriminators import SRGANDiscriminator
    from srgan.models.generators import RCABGenerator

    g = RCABGenerator(in_channels=4, out_channels=4, scale=4, n_channels=8, n_blocks=1)
    d = SRGANDiscriminator(in_channels=4, base_channels=8)
    hr = torch.rand(2, 4, 32, 32)
    calls = roofline.collect_calls(g, d, nn.functional.avg_pool2d(hr, 4), hr)
    n_convs = {name: sum(isinstance(m, nn.Conv2d) for m in net.modules()) for name, net in (("G", g), ("D", d))}
    # G once, D twice (HR and SR).
    assert sum(n for c, n in calls.items() if c.net == "G") == n_convs["G"]
    assert sum(n for c, n in calls.items() if c.net == "D") == 2 * n_convs["D"]
    # Input gradients as the fused step needs them: none into the LR batch or the real HR batch,
    # one into SR (G's adversarial gradient comes through it).
    first_d = [c for c in calls if c.net == "D" and c.in_shape[1] == 4]
    assert sorted(c.input_grad for c in first_d) == [False, True]
    assert [c.input_grad for c in calls if c.net == "G" and c.in_shape[1] == 4] == [False]
    # srgan's band-out tail computes its forward channels-last on the CPU and, training, its gradients
    # in NCHW; the step's other convs are plain NCHW.
    assert [(c.out_channels, c.nchw_backward) for c in calls if c.channels_last] == [(4, True)]
    assert not any(c.nchw_backward for c in calls if not c.channels_last)


def test_roofline_script_times_every_pass_of_every_call(tmp_path):
    out = tmp_path / "roofline.json"
    cmd = [sys.executable, str(ROOT / "bench" / "roofline.py"), "--batch", "2", "--repeats", "1", "--warmup", "0"]
    cmd += ["--steps", "1", "--srgan-shape", "--reference-steps-per-s", "1.0", "--json", str(out)]
    for o in ("generator.n_channels=8", "generator.n_blocks=1", "discriminator.base_channels=8"):
        cmd += ["--override", o]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["reference_steps_per_s"] == 1.0 and "2x needs 0.500 s per step" in run.stdout
    assert result["step_s_median"] > 0 and result["conv_best_s"] > 0 and result["conv_native_s"] > 0
    for row in result["rows"]:
        passes = {"forward", "weight_grad"} | ({"input_grad"} if row["detail"]["input_grad"] else set())
        assert set(row["best"]) == passes
        for p in passes:  # the best of each pass is one of its timed implementations, at its time
            assert row["ms"][p][row["best"][p]["impl"]] == row["best"][p]["ms"]
        assert row["best_ms"] == pytest.approx(sum(b["ms"] for b in row["best"].values()))


def test_tail_fold_bench_compares_the_same_outputs_both_ways():
    sys.path.insert(0, str(ROOT / "bench"))
    import tail_fold

    g = tail_fold.bench_generator(dict(n_channels=8, n_blocks=1, tail_kernel=9), (1, 4, 12, 12), rounds=2, repeats=1)
    assert g["folded"]["median_ms"] > 0 and g["as_written"]["median_ms"] > 0
    assert g["max_abs_diff"] < 1e-4 * max(1.0, g["output_max"])  # the two ways are one function
    t = tail_fold.bench_tail(9, 2, (1, 8, 6, 6), rounds=1, repeats=1)
    assert t["gflop_folded"] > t["gflop_as_written"] > 0 and t["max_abs_diff"] < 1e-4

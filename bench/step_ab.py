"""The three ways of running a GAN step, interleaved in one process (not a test).

    python bench/step_ab.py                      # RCAB, the reference's 9x9 head / tail (bench/peer.py)
    python bench/step_ab.py --model rrdb --rounds 10 --json ab.json

``bench/speed.py`` times each variant in its own process, one after the other; on a machine whose
speed drifts by 10 % over minutes (this project's 2-core VM does) two such runs can swap places.
Here the variants take turns, two timed steps each per round, from the same networks and batch,
so drift hits all of them alike. Reported: the median and the minimum step time of each.

* ``shared``: ``engine.steps.gan_step`` as ``srgan-train`` runs it: D on real and on SR once, one
  backward pass through D, G's adversarial gradient rescaled from it;
* ``second_pass``: the same step with the rescaling turned off (``MAX_LOGIT_GRAD_RATIO = 0``), so G's
  adversarial gradient takes its own backward pass through D (the fused step before the rescaling);
* ``separate``: ``engine.steps.update`` with ``fused=False`` (``trainer.fused_gan_step=false``): ``generator_step``
  then ``discriminator_step``.

All three update the weights, so later rounds run on moved weights; the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import OURS  # noqa: E402  (the reference's generator shape)
from speed import BANDS, SCALE, TRAIN_LR, _compose, _sync  # noqa: E402


def gan_setup(model: str, overrides: list[str], batch: int, device: str = "cpu", precision: str = "no") -> Any:
    """Config, accelerator, prepared G / D (train mode), loss, optimizers and one random batch for GAN steps."""
    import torch
    from accelerate import Accelerator

    from srgan.engine.build import build_networks

    cfg = _compose(model, ["loss.weights.adversarial=0.01", *overrides])
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    g, d, loss, opt_g, opt_d = build_networks(cfg, accelerator.device)
    g, d, opt_g, opt_d = accelerator.prepare(g, d, opt_g, opt_d)
    g.train()
    d.train()
    hr = torch.rand(batch, BANDS, TRAIN_LR * SCALE, TRAIN_LR * SCALE, device=accelerator.device)
    data = {"lr": torch.nn.functional.avg_pool2d(hr, SCALE), "hr": hr}
    return cfg, accelerator, g, d, loss, opt_g, opt_d, data


def run(
    model: str, rounds: int, batch: int, overrides: list[str], device: str = "cpu", precision: str = "no"
) -> dict[str, Any]:
    import srgan.engine.steps as steps

    _, accelerator, g, d, loss, opt_g, opt_d, data = gan_setup(model, overrides, batch, device, precision)
    nets = SimpleNamespace(generator=g, discriminator=d, loss=loss, optimizer_g=opt_g, optimizer_d=opt_d)
    limit = steps.MAX_LOGIT_GRAD_RATIO
    from_d_pass: dict[str, list[bool]] = {"shared": [], "second_pass": []}

    def fused(name: str, ratio: float) -> None:
        steps.MAX_LOGIT_GRAD_RATIO = ratio
        try:
            result = steps.gan_step(accelerator, g, d, loss, opt_g, opt_d, data, 0.01)
        finally:
            steps.MAX_LOGIT_GRAD_RATIO = limit
        from_d_pass[name].append(result.g_adversarial_from_d_pass)

    def separate() -> None:  # the loop's update with trainer.fused_gan_step=false
        steps.update(accelerator, nets, data, 0.01, train_d=True, holdback=None, fused=False, grad_clip=None)

    variants = {
        "shared": lambda: fused("shared", limit),
        "second_pass": lambda: fused("second_pass", 0.0),
        "separate": separate,
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            fn()  # the first step after a switch pays for the other variant's cache state
            for _ in range(2):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    out = {
        name: {"step_s_median": statistics.median(t), "step_s_min": min(t), "steps_per_s": 1 / statistics.median(t)}
        for name, t in times.items()
    }
    for name, t in times.items():
        out[name]["step_s_all"] = t
    out["shared"]["g_adversarial_from_d_pass"] = all(from_d_pass["shared"])
    out["second_pass"]["g_adversarial_from_d_pass"] = any(from_d_pass["second_pass"])
    info = {"model": model, "batch": batch, "rounds": rounds, "overrides": overrides, "precision": precision}
    return {**info, "device": device, "variants": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rcab")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--srgan-shape", action="store_true", help="srgan's own head/tail kernels, not the reference's")
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    overrides = ([] if args.srgan_shape or args.model != "rcab" else OURS) + args.override
    result = run(args.model, args.rounds, args.batch, overrides, args.device, args.precision)
    if args.json:
        args.json.write_text(json.dumps(result))
    base = result["variants"]["separate"]["step_s_median"]
    print(f"{args.model}, batch {args.batch}, {args.precision}, {args.device}, {args.rounds} rounds of 2 timed steps")
    print("| variant | median s/step | min s/step | steps/s | vs separate |")
    print("|---|---:|---:|---:|---:|")
    for name, r in result["variants"].items():
        print(
            f"| {name} | {r['step_s_median']:.3f} | {r['step_s_min']:.3f} | {r['steps_per_s']:.3f} "
            f"| {base / r['step_s_median']:.2f}x |"
        )


if __name__ == "__main__":
    main()

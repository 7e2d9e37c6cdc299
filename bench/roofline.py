"""How fast could this machine run the GAN step's convolutions at best? (not a test)

    python bench/roofline.py                         # RCAB at the reference's shape (bench/peer.py)
    python bench/roofline.py --srgan-shape --json roofline.json

The step's convolutions take about nine tenths of its time on the CPU. This bench finds every
convolution the step runs (hooks on a real forward of G on LR, of D on HR and on SR, with the
input gradients the fused step asks for), then times each distinct call in isolation with every
implementation torch offers on this machine, pass by pass:

* forward: oneDNN on NCHW and on NHWC (channels-last) tensors;
* input gradient: ``convolution_backward`` (oneDNN) on NCHW and NHWC; the same gradient as a
  ``conv_transpose2d``, and for stride 1 as a forward ``conv2d`` with the flipped, transposed
  kernel (oneDNN's forward kernels are its fastest), each on NCHW and NHWC;
* weight (and bias) gradient: ``convolution_backward`` on NCHW and NHWC; for stride 1 also as one
  GEMM per kernel tap on the zero-padded NHWC input (``weight_grad_gemm``), so MKL's GEMM
  competes with oneDNN's kernel.

Every alternative is first checked against ``convolution_backward`` on NCHW (relative error below
1e-4). Sums, over the step's calls:

* ``native``: what the step runs today (NCHW; ``BandConv2d``: forward in channels-last, input
  gradient as a flipped-kernel conv and weight gradient in NCHW);
* ``best``: the fastest implementation of each pass of each call, free layout changes included.
  No real step can beat this: it takes every best kernel and ignores the copies between layouts,
  the activations, losses and the optimizer.

The measured step (``engine.steps.gan_step``, median of ``--steps``) is timed in the same process.
With ``--reference-steps-per-s`` (default: the reference's training rate in
``bench/results/peer_cpu.json``, measured side by side with srgan on this machine) the summary also
gives the step time that twice the reference's rate needs and the speed-up that ``best`` allows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import OURS  # noqa: E402  (the reference's generator shape)
from speed import _timed  # noqa: E402
from step_ab import gan_setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_JSON = ROOT / "bench" / "results" / "peer_cpu.json"
MAX_REL_ERR = 1e-4


@dataclass(frozen=True)
class ConvCall:
    """One convolution as the step runs it (identical calls are counted, not repeated)."""

    net: str
    in_shape: tuple[int, int, int, int]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool
    input_grad: bool
    channels_last: bool  # the step computes its forward in NHWC (srgan's BandConv2d on the CPU)
    nchw_backward: bool  # ... and its gradients in NCHW (BandConv2d when training)

    def out_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (self.in_shape[2 + i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1) // self.stride[i]
            + 1
            for i in range(2)
        )

    def gflop(self) -> float:
        """Forward FLOPs (2 x multiply-adds); each backward pass costs as much again."""
        ho, wo = self.out_hw()
        n, c = self.in_shape[:2]
        return 2 * n * c // self.groups * self.out_channels * self.kernel[0] * self.kernel[1] * ho * wo / 1e9

    def label(self) -> str:
        k, s = self.kernel, self.stride
        return (
            f"{self.net} {self.in_shape[1]}->{self.out_channels} {k[0]}x{k[1]}"
            f"{'' if s == (1, 1) else f' s{s[0]}'} @{self.in_shape[2]}"
            f"{'' if self.groups == 1 else f' g{self.groups}'}{'' if self.input_grad else ' (no dx)'}"
        )


def collect_calls(generator: Any, discriminator: Any, lr: Any, hr: Any) -> Counter[ConvCall]:
    """The convolutions of one fused GAN step: G on LR, D on HR and on SR (a leaf needing grad)."""
    from torch import nn

    from srgan.models.blocks import BandConv2d

    calls: Counter[ConvCall] = Counter()

    def hook(net: str) -> Any:
        def record(module: nn.Conv2d, args: tuple[Any, ...], _out: Any) -> None:
            x = args[0]
            band = isinstance(module, BandConv2d) and x.device.type == "cpu"  # forward in channels-last
            calls[
                ConvCall(
                    net,
                    tuple(x.shape),
                    module.out_channels,
                    tuple(module.kernel_size),
                    tuple(module.stride),
                    tuple(module.padding),
                    tuple(module.dilation),
                    module.groups,
                    module.bias is not None,
                    bool(x.requires_grad),
                    band,
                    band and module._split_backward(x),
                )
            ] += 1

        return record

    handles = []
    for net, model in (("G", generator), ("D", discriminator)):
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    padding = f"{m.padding!r} / {m.padding_mode}"
                    raise ValueError(f"{net}: {m} has padding {padding}; only zero padding is timed")
                handles.append(m.register_forward_hook(hook(net)))
    try:
        sr = generator(lr)
        discriminator(hr)
        discriminator(sr.detach().requires_grad_())
    finally:
        for h in handles:
            h.remove()
    del sr
    return calls


def weight_grad_gemm(grad_out: Any, x: Any, call: ConvCall) -> tuple[Any, Any]:
    """Weight and bias gradient of a stride-1, ungrouped, undilated conv as one GEMM per kernel tap.

    In the zero-padded NHWC input flattened to (pixels, channels), the window of tap (i, j) for the
    output pixel at flat position n starts at n + i * padded_width + j. Laying the output gradient
    on the same padded grid (zeros outside the output) turns every tap into a GEMM between
    contiguous row ranges: dW[:, :, i, j] = grad_out_padded^T @ x_padded[offset : offset + rows].
    """
    import torch
    from torch.nn import functional as F

    n, c, h, w = x.shape
    o = grad_out.shape[1]
    (kh, kw), (ph, pw) = call.kernel, call.padding
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = grad_out.shape[2:]
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous().view(-1, c)
    gp = grad_out.new_zeros(n, hp, wp, o)
    gp[:, :ho, :wo] = grad_out.permute(0, 2, 3, 1)
    rows = n * hp * wp - ((kh - 1) * wp + kw - 1)  # rows past this are padding for every tap
    gt = gp.view(-1, o)[:rows].t()
    dw = x.new_empty(o, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            offset = i * wp + j
            torch.mm(gt, xp[offset : offset + rows], out=dw[:, i, j])
    db = grad_out.sum((0, 2, 3)) if call.bias else None
    return dw.permute(0, 3, 1, 2), db


def _median_ms(fn: Any, warmup: int, repeats: int) -> float:
    return statistics.median(_timed(fn, warmup, repeats)) * 1e3


def _rel_err(a: Any, b: Any) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def time_call(call: ConvCall, warmup: int, repeats: int) -> dict[str, Any]:
    """Median milliseconds of each implementation of each pass of ``call`` (None: not applicable)."""
    import torch
    from torch.nn import functional as F

    cb = torch.ops.aten.convolution_backward
    gen = torch.Generator().manual_seed(0)
    o, (kh, kw) = call.out_channels, call.kernel
    x0 = torch.randn(call.in_shape, generator=gen)
    w0 = torch.randn(o, call.in_shape[1] // call.groups, kh, kw, generator=gen)
    b0 = torch.randn(o, generator=gen) if call.bias else None
    ho, wo = call.out_hw()
    g0 = torch.randn(call.in_shape[0], o, ho, wo, generator=gen)
    geo = (list(call.stride), list(call.padding), list(call.dilation))
    out_pad = [
        call.in_shape[2 + i] - ((o_ - 1) * call.stride[i] - 2 * call.padding[i] + call.dilation[i] * (k - 1) + 1)
        for i, (o_, k) in enumerate(((ho, kh), (wo, kw)))
    ]

    def native_bwd(g: Any, x: Any, w: Any, mask: list[bool]) -> Any:
        bias_sizes = [o] if call.bias else None
        return cb(g, x, w, bias_sizes, *geo, False, [0, 0], call.groups, mask)

    ref_dx, ref_dw, ref_db = native_bwd(g0, x0, w0, [True, True, call.bias])
    result: dict[str, dict[str, float]] = {"forward": {}, "input_grad": {}, "weight_grad": {}}
    stride, padding, dilation = geo
    for layout, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
        x, w, g = (t.contiguous(memory_format=fmt) for t in (x0, w0, g0))

        def fwd(x: Any = x, w: Any = w) -> Any:
            return F.conv2d(x, w, b0, stride, padding, dilation, call.groups)

        result["forward"][f"onednn_{layout}"] = _median_ms(fwd, warmup, repeats)
        candidates_dx: dict[str, Any] = {}
        candidates_dw: dict[str, Any] = {}
        if call.input_grad:
            candidates_dx[f"onednn_{layout}"] = lambda g=g, x=x, w=w: native_bwd(g, x, w, [True, False, False])[0]
            candidates_dx[f"conv_transpose_{layout}"] = lambda g=g, w=w: F.conv_transpose2d(
                g, w, None, stride, padding, out_pad, call.groups, dilation
            )
            if call.stride == (1, 1) and call.groups == 1 and call.dilation == (1, 1):
                wf = w0.flip(2, 3).transpose(0, 1).contiguous(memory_format=fmt)
                pad = [kh - 1 - call.padding[0], kw - 1 - call.padding[1]]
                if min(pad) >= 0:
                    candidates_dx[f"flipped_conv_{layout}"] = lambda g=g, wf=wf, pad=pad: F.conv2d(g, wf, None, 1, pad)
        candidates_dw[f"onednn_{layout}"] = lambda g=g, x=x, w=w: native_bwd(g, x, w, [False, True, call.bias])[1:]
        if layout == "nhwc" and call.stride == (1, 1) and call.groups == 1 and call.dilation == (1, 1):
            candidates_dw["gemm_nhwc"] = lambda g=g, x=x: weight_grad_gemm(g, x, call)
        for name, fn in candidates_dx.items():
            err = _rel_err(fn(), ref_dx)
            if err > MAX_REL_ERR:
                raise AssertionError(f"{call.label()}: input gradient by {name} is off by {err:.2e}")
            result["input_grad"][name] = _median_ms(fn, warmup, repeats)
        for name, fn in candidates_dw.items():
            dw, db = fn()
            err = max(_rel_err(dw, ref_dw), _rel_err(db, ref_db) if call.bias else 0.0)
            if err > MAX_REL_ERR:
                raise AssertionError(f"{call.label()}: weight gradient by {name} is off by {err:.2e}")
            result["weight_grad"][name] = _median_ms(fn, warmup, repeats)
    native_layout = "nhwc" if call.channels_last else "nchw"
    native_ms = result["forward"][f"onednn_{native_layout}"]
    if call.nchw_backward:  # srgan.models.blocks._ChannelsLastForwardNCHWBackward
        native_ms += result["weight_grad"]["onednn_nchw"]
        native_ms += result["input_grad"]["flipped_conv_nchw"] if call.input_grad else 0.0
    else:
        x, w, g = (
            t.contiguous(memory_format=torch.channels_last if call.channels_last else torch.contiguous_format)
            for t in (x0, w0, g0)
        )
        mask = [call.input_grad, True, call.bias]
        native_ms += _median_ms(lambda: native_bwd(g, x, w, mask), warmup, repeats)
    best = {p: (min(v, key=v.get), min(v.values())) for p, v in result.items() if v}
    return {
        "call": call.label(),
        "gflop": call.gflop(),
        "ms": result,
        "best": {p: {"impl": name, "ms": ms} for p, (name, ms) in best.items()},
        "native_ms": native_ms,
        "best_ms": sum(ms for _, ms in best.values()),
    }


def run(model: str, overrides: list[str], batch: int, warmup: int, repeats: int, steps: int) -> dict[str, Any]:
    import torch

    from srgan.engine.steps import gan_step

    cfg, accelerator, g, d, loss, opt_g, opt_d, data = gan_setup(model, overrides, batch)
    if cfg.trainer.channels_last or cfg.trainer.precision != "no":
        raise ValueError("roofline.py times fp32 NCHW training (trainer.channels_last=false, trainer.precision=no)")
    step_s = _timed(lambda: gan_step(accelerator, g, d, loss, opt_g, opt_d, data, 0.01), warmup, steps)
    calls = collect_calls(accelerator.unwrap_model(g), accelerator.unwrap_model(d), data["lr"], data["hr"])
    rows = []
    for call, count in calls.items():
        row = time_call(call, warmup, repeats)
        rows.append({"count": count, **row, "detail": asdict(call)})
    native = sum(r["count"] * r["native_ms"] for r in rows) / 1e3
    best = sum(r["count"] * r["best_ms"] for r in rows) / 1e3
    gflop = sum(r["count"] * r["gflop"] for r in rows)
    return {
        "model": model,
        "overrides": overrides,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "step_s_median": statistics.median(step_s),
        "step_s_all": step_s,
        "conv_forward_gflop": gflop,
        "conv_native_s": native,
        "conv_best_s": best,
        "rows": sorted(rows, key=lambda r: -r["count"] * r["native_ms"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rcab")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each pass of each call")
    parser.add_argument("--steps", type=int, default=8, help="timed GAN steps")
    parser.add_argument("--srgan-shape", action="store_true", help="srgan's own head/tail kernels, not the reference's")
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    parser.add_argument(
        "--reference-steps-per-s",
        type=float,
        default=None,
        help=f"the reference's training rate (default: from {PEER_JSON.relative_to(ROOT)})",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    overrides = ([] if args.srgan_shape or args.model != "rcab" else OURS) + args.override
    result = run(args.model, overrides, args.batch, args.warmup, args.repeats, args.steps)
    ref = args.reference_steps_per_s
    if ref is None and PEER_JSON.exists() and not args.srgan_shape and args.model == "rcab" and args.batch == 4:
        ref = json.loads(PEER_JSON.read_text())["summary"]["train_steps_per_s"]["opensr-srgan"]
    result["reference_steps_per_s"] = ref
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))

    print(f"{args.model}, batch {args.batch}, {result['threads']} threads, torch {result['torch']}")
    print("| conv call | count | GFLOP | native ms | best ms | best forward | best input grad | best weight grad |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    for r in result["rows"]:
        b = r["best"]
        passes = ("forward", "input_grad", "weight_grad")
        cells = [f"{b[p]['impl']} {b[p]['ms']:.1f}" if p in b else "-" for p in passes]
        print(
            f"| {r['call']} | {r['count']} | {r['gflop']:.2f} | {r['native_ms']:.1f} | {r['best_ms']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    step, native, best = result["step_s_median"], result["conv_native_s"], result["conv_best_s"]
    print(f"\nmeasured GAN step (median of {args.steps}): {step:.3f} s")
    print(f"its convolutions, each pass timed alone as the step runs it: {native:.3f} s")
    print(f"the rest of the step (activations, losses, optimizers, copies): {step - native:.3f} s")
    print(f"its convolutions with the fastest implementation of every pass, layout changes free: {best:.3f} s")
    if ref:
        target = 1 / (2 * ref)
        print(f"reference: {ref:.3f} steps/s ({1 / ref:.3f} s); 2x needs {target:.3f} s per step")
        rest = max(step - native, 0.0)
        print(
            f"speed-up over the reference: measured {1 / (ref * step):.2f}x; bound from the convolutions alone "
            f"{1 / (ref * best):.2f}x, with today's rest of the step {1 / (ref * (best + rest)):.2f}x"
        )


if __name__ == "__main__":
    main()

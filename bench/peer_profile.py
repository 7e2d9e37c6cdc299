"""Where the generator's inference time goes, srgan against opensr-srgan 0.4.3, layer by layer (not a test).

    python bench/peer_profile.py                      # needs .venv-peer (make bench-peer makes it)
    python bench/peer_profile.py --rounds 3 --json bench/results/peer_profile_cpu.json

The network and input of ``bench/peer.py``'s inference row on both sides: RCAB 64x16, 9x9 head and
tail, 4 bands, x4, a batch of 4 tiles of 64 px LR, fp32, ``torch.inference_mode``; srgan in the
layout ``srgan-infer`` uses (channels-last), the reference as it runs (NCHW). Each side runs in its
own fresh process with ``ONEDNN_VERBOSE=1``, so oneDNN reports every primitive it executes: which
implementation it picked (``brg_conv_fwd:avx2``, ``jit:avx2``, ``gemm:jit`` ...), the memory layouts
(``abcd`` = NCHW, ``acdb`` = NHWC, ``aBcd8b`` = blocked) and its own time. A second pass under
``torch.profiler`` gives the time of everything that is not a oneDNN primitive (channel attention,
additions, pixel shuffle, interpolation) and shows which aten kernel ran each convolution.

Per layer (convolutions grouped by shape), per side: calls, oneDNN implementation and layout,
milliseconds per forward pass (median over the timed passes of every round), GFLOP and the GFLOP/s
achieved; then the layout reorders, the other ops and the whole forward. The ``best`` column is the
faster side's time for that layer: the sum of the ``best`` column is what a forward pass made of
each side's faster kernels would cost, the bound this comparison can show. The last column is the
roofline: each convolution shape timed alone (in a separate process, no verbose logging), in NCHW
and in NHWC, the faster of the two, times its calls per forward pass: what this machine's kernels
do for that layer with nothing around it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
BANDS, SCALE, TILE, TILE_BATCH = 4, 4, 64, 4
DESC = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih(\d+)oh(\d+)kh(\d+)sh\d+dh\d+ph\d+_iw(\d+)ow(\d+)kw(\d+)")
LAYOUTS = {"abcd": "NCHW", "acdb": "NHWC", "aBcd8b": "NCHW8c (blocked)"}


# --------------------------------------------------------------------------- inside one side's process


def _model(side: str) -> tuple[Any, Any]:
    import torch

    if side == "opensr-srgan":
        from peer import _reference_model

        return _reference_model().eval().generator, torch.contiguous_format
    from hydra.utils import instantiate
    from peer import OURS
    from speed import _compose

    generator = instantiate(_compose("rcab", OURS).generator, _convert_="all").eval()
    return generator.to(memory_format=torch.channels_last), torch.channels_last


def worker(side: str, warmup: int, repeats: int) -> None:
    """Print ``PASS <i> <seconds>`` markers around each timed forward (oneDNN's verbose lines fall
    between them), then one JSON line with the profiler's op table."""
    import torch

    generator, fmt = _model(side)
    x = torch.rand(TILE_BATCH, BANDS, TILE, TILE).contiguous(memory_format=fmt)
    with torch.inference_mode():
        for _ in range(warmup):
            generator(x)
        for i in range(repeats):
            print(f"PASS_START {i}", flush=True)
            start = time.perf_counter()
            generator(x)
            print(f"PASS_END {i} {time.perf_counter() - start}", flush=True)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                generator(x)
    ops = {
        e.key: {"calls": e.count // repeats, "self_ms": e.self_cpu_time_total / 1000 / repeats}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }
    print("OPS " + json.dumps(ops), flush=True)


def roofline(shapes: dict[str, list[int]], warmup: int, repeats: int) -> None:
    """Each convolution shape alone, in NCHW and in NHWC (oneDNN's pick for each), timed without the
    network around it: the fastest this machine runs that layer with the kernels torch has. Prints
    one JSON line, per layer: both layouts' median ms per call and the best GFLOP/s."""
    import torch
    import torch.nn.functional as F

    out = {}
    with torch.inference_mode():
        for key, (mb, ic, oc, ih, iw, kh, kw, oh, ow) in shapes.items():
            weight, bias = torch.randn(oc, ic, kh, kw), torch.randn(oc)
            row: dict[str, float] = {}
            for name, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
                x = torch.randn(mb, ic, ih, iw).contiguous(memory_format=fmt)
                w = weight.contiguous(memory_format=fmt)
                for _ in range(warmup):
                    F.conv2d(x, w, bias, padding=(kh // 2, kw // 2))
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    F.conv2d(x, w, bias, padding=(kh // 2, kw // 2))
                    times.append(time.perf_counter() - start)
                row[f"{name}_ms"] = statistics.median(times) * 1000
            row["best_ms"] = min(row["nchw_ms"], row["nhwc_ms"])
            row["best_gflops_per_s"] = 2 * mb * oc * oh * ow * ic * kh * kw / 1e9 / (row["best_ms"] / 1000)
            out[key] = row
    print("ROOFLINE " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parsing and the driver


def _parse(stdout: str) -> dict[str, Any]:
    """oneDNN's exec lines per timed pass, grouped by primitive and shape, plus the profiler table."""
    passes: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    ops: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("PASS_START"):
            current = {"layers": {}, "reorder_ms": 0.0}
        elif line.startswith("PASS_END") and current is not None:
            current["forward_ms"] = float(line.split()[2]) * 1000
            passes.append(current)
            current = None
        elif line.startswith("OPS "):
            ops = json.loads(line[4:])
        elif current is not None and line.startswith("onednn_verbose") and ",exec," in line:
            fields = line.split(",")
            i = fields.index("exec")
            kind, impl, ms = fields[i + 2], fields[i + 3], float(fields[-1])
            if kind == "reorder":
                current["reorder_ms"] += ms
                continue
            match = DESC.search(line)
            if kind != "convolution" or not match:
                current["layers"].setdefault(f"{kind}:{impl}", {"ms": 0.0, "calls": 0, "impl": impl})
                continue
            mb, ic, oc, ih, oh, kh, iw, ow, kw = map(int, match.groups())
            key = f"{ic}->{oc} {kh}x{kw} at {oh}x{ow}"
            src = re.search(r"src:f32:\w*:blocked:(\w+)", line)
            layer = current["layers"].setdefault(
                key,
                {
                    "ms": 0.0,
                    "calls": 0,
                    "impl": impl,
                    "layout": LAYOUTS.get(src.group(1), src.group(1)) if src else "?",
                    "gflop": 0.0,
                    "shape": [mb, ic, oc, ih, iw, kh, kw, oh, ow],
                },
            )
            layer["ms"] += ms
            layer["calls"] += 1
            layer["gflop"] += 2 * mb * oc * oh * ow * ic * kh * kw / 1e9
    return {"passes": passes, "ops": ops}


def _run_side(side: str, warmup: int, repeats: int) -> dict[str, Any]:
    python = str(PEER_PYTHON) if side == "opensr-srgan" else sys.executable
    cmd = [python, __file__, "--worker", side, "--warmup", str(warmup), "--repeats", str(repeats)]
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{out.stderr[-3000:]}")
    return _parse(out.stdout)


def _summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over every timed pass of every round, per layer."""
    passes = [p for r in rounds for p in r["passes"]]
    layers: dict[str, Any] = {}
    for key in passes[0]["layers"]:
        first = passes[0]["layers"][key]
        ms = statistics.median(p["layers"][key]["ms"] for p in passes if key in p["layers"])
        row = {k: first[k] for k in ("calls", "impl", "layout", "gflop", "shape") if k in first}
        row["ms"] = ms
        if first.get("gflop"):
            row["gflops_per_s"] = first["gflop"] / (ms / 1000)
        layers[key] = row
    forward = [p["forward_ms"] for p in passes]
    return {
        "layers": layers,
        "reorder_ms": statistics.median(p["reorder_ms"] for p in passes),
        "forward_ms": statistics.median(forward),
        "forward_ms_all": forward,
        "ops": rounds[-1]["ops"],
    }


def _table(result: dict[str, Any]) -> str:
    a, b = result["opensr-srgan"], result["srgan"]
    keys = list(dict.fromkeys([*a["layers"], *b["layers"]]))
    lines = [
        "| layer (conv in->out kernel at output size) | calls | opensr-srgan: oneDNN impl, layout | ms | GFLOP/s "
        "| srgan: oneDNN impl, layout | ms | GFLOP/s | best ms | alone, faster layout: ms (GFLOP/s) |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    best_total, alone_total = 0.0, 0.0
    alone = result.get("roofline", {})
    for key in keys:
        ra, rb = a["layers"].get(key, {}), b["layers"].get(key, {})
        times = [r["ms"] for r in (ra, rb) if r]
        best_total += min(times)

        def cells(r: dict[str, Any]) -> str:
            if not r:
                return "-| -| -"
            return f"{r['impl']}, {r.get('layout', '')} | {r['ms']:.1f} | {r.get('gflops_per_s', 0):.0f}"

        calls = (ra or rb)["calls"]
        solo = alone.get(key)
        solo_cell = f"{solo['best_ms'] * calls:.1f} ({solo['best_gflops_per_s']:.0f})" if solo else "-"
        alone_total += solo["best_ms"] * calls if solo else 0.0
        lines.append(f"| {key} | {calls} | {cells(ra)} | {cells(rb)} | {min(times):.1f} | {solo_cell} |")
    conv_a = sum(r["ms"] for r in a["layers"].values())
    conv_b = sum(r["ms"] for r in b["layers"].values())
    totals = f"{conv_a:.1f} | | | {conv_b:.1f} | | {best_total:.1f} | {alone_total:.1f} |"
    lines.append(f"| all oneDNN convolutions | | | {totals}")
    lines.append(f"| oneDNN reorders (layout copies) | | | {a['reorder_ms']:.1f} | | | {b['reorder_ms']:.1f} | | | |")
    lines.append(f"| whole forward (wall) | | | {a['forward_ms']:.1f} | | | {b['forward_ms']:.1f} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--roofline", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.warmup, args.repeats)
        return
    if args.roofline:
        roofline(json.loads(args.roofline), args.warmup, args.repeats)
        return
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `make bench-peer` once (it creates .venv-peer)")
    rounds: dict[str, list[dict[str, Any]]] = {"opensr-srgan": [], "srgan": []}
    for r in range(args.rounds):
        for side in rounds if r % 2 == 0 else reversed(list(rounds)):
            rounds[side].append(_run_side(side, args.warmup, args.repeats))
            print(f"round {r}: {side} forward {rounds[side][-1]['passes'][-1]['forward_ms']:.0f} ms", flush=True)
    result: dict[str, Any] = {side: _summarise(rs) for side, rs in rounds.items()}
    shapes = {k: v["shape"] for k, v in result["srgan"]["layers"].items() if "shape" in v}
    cmd = [sys.executable, __file__, "--roofline", json.dumps(shapes), "--warmup", "2", "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    result["roofline"] = json.loads(next(line for line in out.splitlines() if line.startswith("ROOFLINE "))[9:])
    result["protocol"] = {"bands": BANDS, "scale": SCALE, "tile": TILE, "batch": TILE_BATCH, "rounds": args.rounds}
    print("\n" + _table(result))
    ratio = result["opensr-srgan"]["forward_ms"] / result["srgan"]["forward_ms"]
    print(f"\nsrgan / reference, whole forward (medians): {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

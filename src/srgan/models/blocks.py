"""Building blocks shared by the generator and discriminator families."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

SUPPORTED_SCALES = (2, 3, 4, 8)
NORMS = ("none", "batch", "instance")


def check_scale(scale: int) -> None:
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")


def check_channels(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a band or channel count), got {value!r}")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``none`` (identity), ``batch`` or ``instance`` normalisation over ``channels``."""
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class _ChannelsLastForwardNCHWBackward(torch.autograd.Function):
    """Stride-1 conv2d: forward on a channels-last copy of the input, gradients in NCHW.

    The fastest kernels differ by pass for a many-to-few-channel conv on the CPU
    (``bench/roofline.py``, 64 -> 4 at 128 px): the forward in channels-last, the input gradient as
    a forward conv of the NCHW output gradient with the flipped, transposed kernel, the weight
    gradient from oneDNN's NCHW kernel on the NCHW input that is saved here. No layout copy in the
    backward pass. The backward is built from differentiable ops, so double backward works.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, 1, padding).contiguous()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        (ph, pw), (kh, kw) = ctx.padding, weight.shape[2:]
        needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if needs_x:
            grad_x = F.conv2d(grad_out, weight.flip(2, 3).transpose(0, 1), None, 1, (kh - 1 - ph, kw - 1 - pw))
        if needs_w or needs_b:
            bias_sizes = [weight.shape[0]] if needs_b else None
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, bias_sizes, [1, 1], [ph, pw], [1, 1], False, [0, 0], 1, [False, needs_w, needs_b]
            )
        return grad_x, grad_w, grad_b, None


class BandConv2d(nn.Conv2d):
    """A ``Conv2d`` for a generator's last layer: many features in, a few bands out, at HR.

    On the CPU, oneDNN's NCHW kernels vectorise over output channels, so a 64 -> 4 band conv at HR
    runs at a fraction of the machine's speed (9x9: 12 against 61 GFLOP/s forward, measured here);
    in NHWC it does not care. This layer computes its forward in channels-last there and hands back
    the input's layout, so its neighbours keep theirs. Its gradients are faster in NCHW, so for an
    NCHW float32 input that needs gradients (training) they are computed there, from the NCHW
    input (``_ChannelsLastForwardNCHWBackward``; stride 1, the only stride a generator tail uses).
    (For the discriminator's 4 -> 64 first conv the round trip cost more than it saved, so it
    stays a plain ``Conv2d``.) Same parameters and state-dict keys as ``Conv2d``; on other
    devices it is a plain ``Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        if self._split_backward(x):
            return _ChannelsLastForwardNCHWBackward.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def _split_backward(self, x: torch.Tensor) -> bool:
        kh, kw = self.kernel_size
        ph, pw = self.padding if not isinstance(self.padding, str) else (-1, -1)
        return (
            torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and 0 <= ph <= kh - 1
            and 0 <= pw <= kw - 1
        )


class ResidualBlock(nn.Module):
    """SRResNet block (Ledig et al. 2017): conv-norm-PReLU-conv-norm plus identity."""

    def __init__(self, channels: int, norm: str = "none") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(norm, channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel attention (Zhang et al. 2018, RCAN)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class RCAB(nn.Module):
    """Residual channel-attention block: conv-ReLU-conv, channel attention, scaled skip."""

    def __init__(self, channels: int, reduction: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            ChannelAttention(channels, reduction),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One pass (x + res_scale * body) instead of a multiply and an add over the features.
        return torch.add(x, self.body(x), alpha=self.res_scale)


class DenseBlock(nn.Module):
    """ESRGAN residual dense block (Wang et al. 2018): five convs, each seeing all earlier outputs.

    ``growth`` is the channel count each of the first four convs adds; the fifth maps back to
    ``channels`` and its output is added to the input scaled by ``res_scale``.
    """

    def __init__(self, channels: int, growth: int = 32, res_scale: float = 0.2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(4))
        self.fuse = nn.Conv2d(channels + 4 * growth, channels, 3, padding=1)
        self.res_scale = res_scale
        for conv in [*self.convs, self.fuse]:
            # ESRGAN's trick: scaled-down Kaiming init keeps the deep residual stack stable.
            nn.init.kaiming_normal_(conv.weight, a=0.2)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        return torch.add(x, self.fuse(torch.cat(features, 1)), alpha=self.res_scale)


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a scaled residual."""

    def __init__(self, channels: int, growth: int = 32, res_scale: float = 0.2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(channels, growth, res_scale) for _ in range(3)))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.blocks(x), alpha=self.res_scale)


class LargeKernelAttention(nn.Module):
    """LKA (Guo et al. 2022, "Visual Attention Network"): a large receptive field decomposed into a
    depthwise conv, a dilated depthwise conv and a pointwise conv, used as a multiplicative gate."""

    def __init__(self, channels: int, kernel: int = 5, dilated_kernel: int = 7, dilation: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.dilated = nn.Conv2d(
            channels,
            channels,
            dilated_kernel,
            padding=dilation * (dilated_kernel // 2),
            dilation=dilation,
            groups=channels,
        )
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pointwise(self.dilated(self.depthwise(x)))


class LKABlock(nn.Module):
    """VAN-style block: 1x1 -> GELU -> LKA gate -> 1x1 with a skip, then a depthwise feed-forward."""

    def __init__(
        self, channels: int, kernel: int = 5, dilated_kernel: int = 7, dilation: int = 3, mlp_ratio: float = 2.0
    ) -> None:
        super().__init__()
        hidden = max(1, int(channels * mlp_ratio))
        self.attention = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            nn.GELU(),
            LargeKernelAttention(channels, kernel, dilated_kernel, dilation),
            nn.Conv2d(channels, channels, 1),
        )
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)
        return x + self.mlp(x)


NOISE_MODES = ("random", "fixed", "none")


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise times a learned per-channel strength (as in StyleGAN).

    In training the noise is always fresh. In eval mode ``mode`` decides: ``random`` draws new
    noise every call (several plausible outputs per input), ``fixed`` draws it from ``seed`` so the
    same input always gives the same output, ``none`` adds nothing.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Zero strength: the untrained network is deterministic, and training decides how much noise helps.
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.mode = "random"
        self.seed = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "random" if self.training else self.mode
        if mode == "none":
            return x
        shape = (x.shape[0], 1, x.shape[2], x.shape[3])
        if mode == "random":
            noise = torch.randn(shape, device=x.device, dtype=x.dtype)
        else:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            noise = torch.randn(shape, generator=gen).to(device=x.device, dtype=x.dtype)
        return x + self.strength * noise


class StochasticBlock(nn.Module):
    """Residual block with noise injected after each conv: conv-noise-LReLU-conv-noise plus identity."""

    def __init__(self, channels: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.noise1 = NoiseInjection(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.noise2 = NoiseInjection(channels)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.noise1(self.conv1(x)), 0.2)
        return torch.add(x, self.noise2(self.conv2(y)), alpha=self.res_scale)


def icnr_(weight: torch.Tensor, factor: int) -> None:
    """ICNR initialisation (Aitken et al. 2017) of a conv that feeds ``PixelShuffle(factor)``.

    Every group of ``factor**2`` output channels that pixel shuffle spreads over one
    ``factor x factor`` cell gets the same kernel, so the shuffled output starts as a
    nearest-neighbour upsampling: no checkerboard pattern at step 0.
    """
    out_channels = weight.shape[0]
    sub = torch.empty(out_channels // factor**2, *weight.shape[1:])
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(factor**2, dim=0))


def _stage_factors(scale: int) -> list[int]:
    check_scale(scale)
    return [3] if scale == 3 else [2] * int(math.log2(scale))


class PixelShuffleUpsampler(nn.Sequential):
    """Conv + pixel shuffle stages (ICNR-initialised): x2 stages for 2/4/8, a single x3 stage for 3."""

    def __init__(self, channels: int, scale: int) -> None:
        layers: list[nn.Module] = []
        for f in _stage_factors(scale):
            conv = nn.Conv2d(channels, channels * f * f, 3, padding=1)
            icnr_(conv.weight, f)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.PixelShuffle(f), nn.LeakyReLU(0.2, inplace=True)]
        super().__init__(*layers)


def fold_conv_through_pixel_shuffle(
    weight: torch.Tensor, bias: torch.Tensor | None, factor: int
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
    """Rewrite ``conv(pixel_shuffle(z, factor))`` as ``pixel_shuffle(conv'(z), factor)``.

    ``weight`` is a stride-1, zero-padded ``k x k`` conv (padding ``k // 2``) applied at the
    shuffled resolution. Output pixel ``(f i + a, f j + b)`` reads shuffled pixels
    ``f (i + u) + a'`` for ``u`` in ``[-ceil(p / f), ceil(p / f)]`` (``p = k // 2``), so the same sum
    is a conv on the unshuffled ``z`` with ``C f^2`` inputs, ``O f^2`` outputs and a
    ``2 ceil(p / f) + 1`` kernel: entry ``[o f^2 + a f + b, c f^2 + a' f + b', u, v]`` is
    ``weight[o, c, f u + a' - a + p, f v + b' - b + p]``, zero where that tap lies outside the
    kernel. Zero padding by ``ceil(p / f)`` on the coarse grid pads exactly the shuffled pixels
    that zero padding by ``p`` reaches, so the result is the same (to float rounding).

    Returns the folded weight, the folded bias (each bias repeated ``f^2`` times) and the padding.
    Built with indexing only (no in-place writes), so autograd and tracing see through it.
    """
    o, c, kh, kw = weight.shape
    f = factor
    taps = []
    for k in (kh, kw):
        p = k // 2
        reach = -(-p // f)  # ceil(p / f)
        size = 2 * reach + 1
        # Extra zeros so that every (out phase, in phase, offset) tap indexes inside the padded kernel.
        extra = max(0, f * reach + f - 1 - p)
        out_phase = torch.arange(f).view(f, 1, 1)
        in_phase = torch.arange(f).view(1, f, 1)
        offset = torch.arange(-reach, reach + 1).view(1, 1, size)
        taps.append((f * offset + in_phase - out_phase + p + extra, reach, size, extra))
    (rows, reach_h, size_h, extra_h), (cols, reach_w, size_w, extra_w) = taps
    padded = F.pad(weight, (extra_w, extra_w, extra_h, extra_h))
    rows = rows.to(weight.device).view(f, 1, f, 1, size_h, 1)  # (a, ., a', ., u, .)
    cols = cols.to(weight.device).view(1, f, 1, f, 1, size_w)  # (., b, ., b', ., v)
    folded = padded[:, :, rows, cols]  # (o, c, a, b, a', b', u, v)
    folded = folded.permute(0, 2, 3, 1, 4, 5, 6, 7).reshape(o * f * f, c * f * f, size_h, size_w)
    folded_bias = bias.repeat_interleave(f * f) if bias is not None else None
    return folded, folded_bias, (reach_h, reach_w)


class NearestConvUpsampler(nn.Module):
    """Nearest-neighbour interpolation then conv per stage (ESRGAN's upsampler): no checkerboard by design."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.factors = _stage_factors(scale)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f, conv in zip(self.factors, self.convs):
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=f, mode="nearest")), 0.2)
        return x


UPSAMPLERS = {"pixelshuffle": PixelShuffleUpsampler, "nearest": NearestConvUpsampler}


def upsample_image(x: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    """Interpolate an image batch by ``scale`` (the global-residual base of the generators)."""
    # align_corners=False puts LR pixel centres at the centres of the HR blocks they cover,
    # which matches block-averaging degradations (box, area).
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)

"""Generator families.

All share ``in_channels, out_channels, scale, n_channels, n_blocks, upsampler, global_residual,
head_kernel, tail_kernel`` so that ``generator=<family>`` swaps freely; each adds its own block
options. The common skeleton (:class:`SRGenerator`) is head conv -> blocks + conv with a long skip
-> upsampler -> tail conv, plus optionally the interpolated input (global residual).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from srgan.models.blocks import (
    NOISE_MODES,
    RCAB,
    RRDB,
    UPSAMPLERS,
    BandConv2d,
    LKABlock,
    NoiseInjection,
    PixelShuffleUpsampler,
    ResidualBlock,
    StochasticBlock,
    check_channels,
    check_scale,
    fold_conv_through_pixel_shuffle,
    upsample_image,
)

GLOBAL_RESIDUAL_MODES = ("bicubic", "bilinear", "bicubic_relative", "bilinear_relative", None)


class SRGenerator(nn.Module):
    """The skeleton every family shares; subclasses only supply their blocks.

    With ``global_residual`` set, the network predicts only the detail added to the interpolated
    input and the tail conv starts at zero, so the untrained network equals that interpolation.
    ``<mode>_relative`` makes that detail a relative one, ``SR = up * (1 + detail)``, for values in
    physical units (reflectance, DN / 255; not z-scores): an error of the detail then scales with
    the pixel's brightness, so dark water gets no land-sized offsets, and a detail common to the
    bands leaves their ratios (NBR2, NDVI, the spectral angle) as the interpolation has them.
    Without it, a freshly initialised net starts far below bicubic and needs many more steps to
    catch up (DESIGN.md: 5.7 dB below bicubic after 20 CPU minutes).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int,
        blocks: Iterable[nn.Module],
        upsampler: str = "pixelshuffle",
        global_residual: str | None = "bicubic",
        head_kernel: int = 3,
        tail_kernel: int = 3,
    ) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, out_channels=out_channels, n_channels=n_channels)
        for name, k in (("head_kernel", head_kernel), ("tail_kernel", tail_kernel)):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd integer, got {k!r}")
        check_scale(scale)
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {tuple(UPSAMPLERS)}, got {upsampler!r}")
        if global_residual not in GLOBAL_RESIDUAL_MODES:
            raise ValueError(f"global_residual must be one of {GLOBAL_RESIDUAL_MODES}, got {global_residual!r}")
        if global_residual is not None and in_channels != out_channels:
            raise ValueError(
                f"global_residual={global_residual!r} adds the upsampled input to the output, so it needs "
                f"in_channels == out_channels (got {in_channels} and {out_channels})"
            )
        self.scale = scale
        self.global_residual = global_residual
        # "<mode>_relative": the interpolation ``mode`` scales the detail (forward); fixed here, once.
        self._relative = global_residual is not None and global_residual.endswith("_relative")
        self._base_mode = global_residual.removesuffix("_relative") if global_residual is not None else None
        self.head = nn.Conv2d(in_channels, n_channels, head_kernel, padding=head_kernel // 2)
        self.body = nn.Sequential(*blocks, nn.Conv2d(n_channels, n_channels, 3, padding=1))
        self.upsample = UPSAMPLERS[upsampler](n_channels, scale)
        self.tail = BandConv2d(n_channels, out_channels, tail_kernel, padding=tail_kernel // 2)
        if global_residual is not None:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)
        # Inference on the CPU folds the tail through the last x2 pixel shuffle (see _folded_tail);
        # False runs the layers as written everywhere.
        self.fold_tail = True

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        features = features + self.body(features)
        if self._fold_tail(features):
            detail = self._folded_tail(features)
        else:
            detail = self.tail(self.upsample(features))
        if self.global_residual is None:
            return detail
        base = upsample_image(lr, self.scale, self._base_mode)
        return base + base * detail if self._relative else base + detail

    def _fold_tail(self, features: torch.Tensor) -> bool:
        """Whether this call takes the folded tail: eager CPU inference.

        Training (autograd on) keeps the layers as written, and so does a traced graph (ONNX,
        torch.export, TorchScript, torch.compile: ``is_compiling`` is also true under torch.export,
        strict or not, and exists in every torch srgan supports), so an exported graph is the
        architecture; its runtime may not be a CPU.
        """
        if not (
            self.fold_tail
            and features.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export()
        ):
            return False
        # Checked on every call (attribute reads only), not once at construction: the modules may
        # have been replaced since, or hooked (a hook, or old-style weight_norm's pre-hook, would
        # not run on the folded path).
        tail, upsample = self.tail, self.upsample
        if type(tail) not in (nn.Conv2d, BandConv2d) or type(upsample) is not PixelShuffleUpsampler:
            return False
        shuffle, activation = upsample[-2], upsample[-1]
        return (
            isinstance(shuffle, nn.PixelShuffle)
            and isinstance(activation, nn.LeakyReLU)  # elementwise: it commutes with the shuffle
            and shuffle.upscale_factor == 2
            and tail.stride == (1, 1)
            and tail.dilation == (1, 1)
            and tail.groups == 1
            and tail.padding_mode == "zeros"
            and tail.padding == (tail.kernel_size[0] // 2, tail.kernel_size[1] // 2)
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (tail, shuffle))
        )

    def _folded_tail(self, features: torch.Tensor) -> torch.Tensor:
        """``tail(leaky(pixel_shuffle(z, 2)))`` computed as ``pixel_shuffle(tail'(leaky(z)), 2)``.

        The tail maps many features to a few bands at the full resolution: on the CPU oneDNN runs
        such a conv far below its speed (64 -> 4 9x9: about 50 GFLOP/s against about 110 for the
        3x3 body), and the pixel shuffle of 4 x 64 channels before it is a large layout copy in
        channels-last. Folded (:func:`fold_conv_through_pixel_shuffle`), the tail is a conv with 4x
        the inputs and outputs on the half-resolution grid, and only the few output bands are
        shuffled. Same result to float rounding; ``bench/tail_fold.py`` measures it.
        """
        layers = list(self.upsample)
        z = features
        for layer in layers[:-2]:  # every stage but the last shuffle and its activation
            z = layer(z)
        z = layers[-1](z)  # the activation is elementwise, so it commutes with the shuffle
        weight, bias, padding = fold_conv_through_pixel_shuffle(self.tail.weight, self.tail.bias, 2)
        return F.pixel_shuffle(F.conv2d(z, weight, bias, 1, padding), 2)


def _blocks(n_blocks: int, make) -> list[nn.Module]:
    if not isinstance(n_blocks, int) or n_blocks < 0:
        raise ValueError(f"n_blocks must be a non-negative integer, got {n_blocks!r}")
    return [make() for _ in range(n_blocks)]


class SRResNetGenerator(SRGenerator):
    """SRResNet (Ledig et al. 2017): residual blocks, normalisation ``none`` or ``batch``, 9x9 head and tail."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int = 64,
        n_blocks: int = 16,
        norm: str = "none",
        upsampler: str = "pixelshuffle",
        global_residual: str | None = "bicubic",
        head_kernel: int = 9,
        tail_kernel: int = 9,
    ) -> None:
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
        blocks = _blocks(n_blocks, lambda: ResidualBlock(n_channels, norm))
        super().__init__(
            in_channels, out_channels, scale, n_channels, blocks, upsampler, global_residual, head_kernel, tail_kernel
        )


class RCABGenerator(SRGenerator):
    """RCAN-style generator (Zhang et al. 2018): residual channel-attention blocks."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int = 64,
        n_blocks: int = 16,
        reduction: int = 16,
        res_scale: float = 1.0,
        upsampler: str = "pixelshuffle",
        global_residual: str | None = "bicubic",
        head_kernel: int = 3,
        tail_kernel: int = 3,
    ) -> None:
        check_channels(reduction=reduction)
        blocks = _blocks(n_blocks, lambda: RCAB(n_channels, reduction, res_scale))
        super().__init__(
            in_channels, out_channels, scale, n_channels, blocks, upsampler, global_residual, head_kernel, tail_kernel
        )


class RRDBGenerator(SRGenerator):
    """RRDBNet (Wang et al. 2018, ESRGAN): residual-in-residual dense blocks.

    ``growth_channels`` and ``res_scale`` are passed to every dense block (the reference accepts
    these keys and ignores them).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int = 64,
        n_blocks: int = 16,
        growth_channels: int = 32,
        res_scale: float = 0.2,
        upsampler: str = "pixelshuffle",
        global_residual: str | None = "bicubic",
        head_kernel: int = 3,
        tail_kernel: int = 3,
    ) -> None:
        check_channels(growth_channels=growth_channels)
        blocks = _blocks(n_blocks, lambda: RRDB(n_channels, growth_channels, res_scale))
        super().__init__(
            in_channels, out_channels, scale, n_channels, blocks, upsampler, global_residual, head_kernel, tail_kernel
        )


class LKAGenerator(SRGenerator):
    """Large-kernel-attention blocks (depthwise, dilated depthwise, pointwise; Guo et al. 2022)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int = 64,
        n_blocks: int = 16,
        kernel: int = 5,
        dilated_kernel: int = 7,
        dilation: int = 3,
        mlp_ratio: float = 2.0,
        upsampler: str = "pixelshuffle",
        global_residual: str | None = "bicubic",
        head_kernel: int = 3,
        tail_kernel: int = 3,
    ) -> None:
        for name, k in (("kernel", kernel), ("dilated_kernel", dilated_kernel)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be a positive odd number, got {k}")
        blocks = _blocks(n_blocks, lambda: LKABlock(n_channels, kernel, dilated_kernel, dilation, mlp_ratio))
        super().__init__(
            in_channels, out_channels, scale, n_channels, blocks, upsampler, global_residual, head_kernel, tail_kernel
        )


class StochasticGenerator(SRGenerator):
    """Residual blocks modulated by injected noise: several plausible outputs per input.

    The noise is always resampled in training. At inference ``noise_mode`` picks ``random`` (new
    noise per call), ``fixed`` (noise from ``noise_seed``: reproducible) or ``none``; change it on a
    loaded model with :meth:`set_noise`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        n_channels: int = 64,
        n_blocks: int = 16,
        res_scale: float = 1.0,
        noise_mode: str = "fixed",
        noise_seed: int = 0,
        upsampler: str = "pixelshuffle",
        global_residual: str | None = "bicubic",
        head_kernel: int = 3,
        tail_kernel: int = 3,
    ) -> None:
        blocks = _blocks(n_blocks, lambda: StochasticBlock(n_channels, res_scale))
        super().__init__(
            in_channels, out_channels, scale, n_channels, blocks, upsampler, global_residual, head_kernel, tail_kernel
        )
        self.set_noise(noise_mode, noise_seed)

    def set_noise(self, mode: str, seed: int | None = None) -> None:
        """Choose the inference noise: ``random``, ``fixed`` (from ``seed``) or ``none``."""
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        for i, module in enumerate(m for m in self.modules() if isinstance(m, NoiseInjection)):
            module.mode = mode
            if seed is not None:
                # A different stream per injection point, all derived from one seed.
                module.seed = seed * 1_000_003 + i

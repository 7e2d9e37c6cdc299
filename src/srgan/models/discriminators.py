"""Discriminator families. All share ``in_channels``, ``base_channels`` and ``spectral_norm``.

Each returns raw logits: one per image (``srgan``, ``esrgan``), one per patch (``patchgan``) or
one per pixel (``unet``); the adversarial losses work element-wise on any of these shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm as _spectral_norm

from srgan.models.blocks import check_channels, norm_layer


def _wrapper(spectral_norm: bool) -> Callable[[nn.Module], nn.Module]:
    return _spectral_norm if spectral_norm else (lambda m: m)


def init_for_leaky_relu(layer: nn.Module, slope: float = 0.2) -> nn.Module:
    """He-initialise a conv or linear layer that feeds a LeakyReLU(``slope``), with a zero bias; returns it.

    PyTorch's default (``kaiming_uniform_(a=sqrt(5))``, weight variance ``1 / (3 fan_in)``) keeps
    about 0.42 of the input-dependent signal per LeakyReLU(0.2) layer, while its bias (uniform in
    ``+-1/sqrt(fan_in)``) keeps its size. Without a normalisation layer to undo it, ten such layers
    leave logits that are all bias: D(y) = D(G(x)) to seven digits, and the real and fake halves
    of D's loss gradient cancel (``d_grad_norm`` ~1e-3), so D does not learn for hundreds of steps.
    With variance ``2 / ((1 + slope^2) fan_in)`` the signal keeps its size through any depth.
    Call it before spectral normalisation wraps the layer, so its power iteration starts on these weights.
    """
    nn.init.kaiming_normal_(layer.weight, a=slope, mode="fan_in", nonlinearity="leaky_relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class SRGANDiscriminator(nn.Module):
    """SRGAN discriminator (Ledig et al. 2017): strided conv blocks and one real/fake logit.

    Unlike the original fixed 96/128 px input with a dense head sized for it, adaptive average
    pooling makes the head independent of the patch size. The strided convs are 3x3 as in the
    paper (``downsample_kernel``; 4 gives the DCGAN-style 4x4 variant). Without the paper's batch
    norm, the layers are He-initialised for LeakyReLU (:func:`init_for_leaky_relu`): with torch's
    default initialisation this D's logits do not depend on its input at the start of training.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        n_stages: int = 4,
        head_features: int = 1024,
        spectral_norm: bool = False,
        downsample_kernel: int = 3,
    ) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, base_channels=base_channels, n_stages=n_stages)
        if downsample_kernel not in (3, 4):
            raise ValueError(f"downsample_kernel must be 3 or 4, got {downsample_kernel!r}")
        sn = _wrapper(spectral_norm)

        def wrap(layer: nn.Module) -> nn.Module:
            # Batch norm is left out (it couples samples in a batch and fights spectral norm), so
            # nothing rescales the activations: the initialisation must keep them (init_for_leaky_relu).
            return sn(init_for_leaky_relu(layer))

        layers: list[nn.Module] = [
            wrap(nn.Conv2d(in_channels, base_channels, 3, padding=1)),
            nn.LeakyReLU(0.2, True),
        ]
        channels = base_channels
        for stage in range(n_stages):
            out = base_channels * 2 ** min(stage, 3)
            if stage > 0:
                layers += [wrap(nn.Conv2d(channels, out, 3, padding=1)), nn.LeakyReLU(0.2, True)]
            layers += [wrap(nn.Conv2d(out, out, downsample_kernel, stride=2, padding=1)), nn.LeakyReLU(0.2, True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            wrap(nn.Linear(channels, head_features)),
            nn.LeakyReLU(0.2, True),
            wrap(nn.Linear(head_features, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit per image, shape ``(batch, 1)``."""
        return self.head(self.features(x))


class PatchGANDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): ``n_layers`` strided convs, one logit per receptive-field patch."""

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, base_channels=base_channels, n_layers=n_layers)
        wrap = _wrapper(spectral_norm)
        # No norm layer next to spectral norm: both try to control the layer's scale.
        norm = "none" if spectral_norm else norm
        layers: list[nn.Module] = [
            wrap(nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2, True),
        ]
        channels = base_channels
        for i in range(1, n_layers + 1):
            out = base_channels * 2 ** min(i, 3)
            stride = 2 if i < n_layers else 1
            layers += [
                wrap(nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=norm == "none")),
                norm_layer(norm, out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        layers.append(wrap(nn.Conv2d(channels, 1, 4, stride=1, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return a map of patch logits, shape ``(batch, 1, h, w)``."""
        return self.net(x)


class ESRGANDiscriminator(nn.Module):
    """VGG-style discriminator of ESRGAN (Wang et al. 2018): five stages of conv3x3 + strided conv4x4.

    The original flattens a 4x4 map from a fixed 128 px input; here the map is adaptively pooled
    to ``pool x pool`` first, so any patch size works. Layers are He-initialised for LeakyReLU
    (:func:`init_for_leaky_relu`): with ``norm=none`` and torch's default initialisation its
    logits would not depend on its input (ten layers without a norm to restore the scale).
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        n_stages: int = 5,
        norm: str = "batch",
        pool: int = 4,
        head_features: int = 100,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, base_channels=base_channels, n_stages=n_stages, pool=pool)
        sn = _wrapper(spectral_norm)

        def wrap(layer: nn.Module) -> nn.Module:
            return sn(init_for_leaky_relu(layer))

        norm = "none" if spectral_norm else norm
        layers: list[nn.Module] = [
            wrap(nn.Conv2d(in_channels, base_channels, 3, padding=1)),
            nn.LeakyReLU(0.2, True),
            wrap(nn.Conv2d(base_channels, base_channels, 4, stride=2, padding=1, bias=norm == "none")),
            norm_layer(norm, base_channels),
            nn.LeakyReLU(0.2, True),
        ]
        channels = base_channels
        for stage in range(1, n_stages):
            out = base_channels * 2 ** min(stage, 3)
            layers += [
                wrap(nn.Conv2d(channels, out, 3, padding=1, bias=norm == "none")),
                norm_layer(norm, out),
                nn.LeakyReLU(0.2, True),
                wrap(nn.Conv2d(out, out, 4, stride=2, padding=1, bias=norm == "none")),
                norm_layer(norm, out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            wrap(nn.Linear(channels * pool * pool, head_features)),
            nn.LeakyReLU(0.2, True),
            wrap(nn.Linear(head_features, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return one logit per image, shape ``(batch, 1)``."""
        return self.head(self.features(x))


class UNetDiscriminator(nn.Module):
    """U-Net discriminator with spectral normalisation (Real-ESRGAN, Wang et al. 2021).

    Three strided downsampling convs, three bilinear upsampling stages with skip connections, and
    one logit per input pixel: the generator is told where an image looks fake, not only whether.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, spectral_norm: bool = True) -> None:
        super().__init__()
        check_channels(in_channels=in_channels, base_channels=base_channels)
        wrap = _wrapper(spectral_norm)
        c = base_channels
        self.conv0 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.down = nn.ModuleList(
            [
                wrap(nn.Conv2d(c, c * 2, 4, 2, 1, bias=False)),
                wrap(nn.Conv2d(c * 2, c * 4, 4, 2, 1, bias=False)),
                wrap(nn.Conv2d(c * 4, c * 8, 4, 2, 1, bias=False)),
            ]
        )
        self.up = nn.ModuleList(
            [
                wrap(nn.Conv2d(c * 8, c * 4, 3, 1, 1, bias=False)),
                wrap(nn.Conv2d(c * 4, c * 2, 3, 1, 1, bias=False)),
                wrap(nn.Conv2d(c * 2, c, 3, 1, 1, bias=False)),
            ]
        )
        self.refine = nn.Sequential(
            wrap(nn.Conv2d(c, c, 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2, True),
            wrap(nn.Conv2d(c, c, 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2, True),
        )
        self.out = nn.Conv2d(c, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-pixel logits, shape ``(batch, 1, H, W)``."""
        skips = [F.leaky_relu(self.conv0(x), 0.2)]
        for conv in self.down:
            skips.append(F.leaky_relu(conv(skips[-1]), 0.2))
        y = skips.pop()
        for conv in self.up:
            skip = skips.pop()
            # Sizes that are not multiples of 8 are matched exactly instead of assuming x2.
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = F.leaky_relu(conv(y), 0.2) + skip
        return self.out(self.refine(y))

"""Perceptual losses on ImageNet networks (VGG features, LPIPS), with an explicit band mapping.

The networks see 3-band images in [0, 1]. How a multispectral image becomes such images is set in
the config and never random: ``rgb_bands=[i, j, k]`` picks three bands as R, G, B; ``rgb_bands=null``
passes every band on its own as a grey image (repeated to 3 channels) and averages the distances.
The networks are frozen, run in fp32 even under autocast, are not registered as parameters of the
loss (so no optimizer or DDP wrapper ever sees them), and need real weights: missing weights are
an error at construction, never random initialisation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from srgan.weights import require_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision ``features`` index of each ReLU, by the usual names.
_VGG_LAYERS = {
    "vgg16": ["relu1_1", "relu1_2", "pool1", "relu2_1", "relu2_2", "pool2", "relu3_1", "relu3_2", "relu3_3",
              "pool3", "relu4_1", "relu4_2", "relu4_3", "pool4", "relu5_1", "relu5_2", "relu5_3"],
    "vgg19": ["relu1_1", "relu1_2", "pool1", "relu2_1", "relu2_2", "pool2", "relu3_1", "relu3_2", "relu3_3",
              "relu3_4", "pool3", "relu4_1", "relu4_2", "relu4_3", "relu4_4", "pool4", "relu5_1", "relu5_2",
              "relu5_3", "relu5_4"],
}  # fmt: skip


def vgg_layer_index(network: str, name: str) -> int:
    """Index in ``torchvision.models.<network>().features`` of the output named ``name``."""
    layers = _VGG_LAYERS[network]
    if name not in layers:
        raise ValueError(f"{network} has no layer {name!r}; choose from {[n for n in layers if n.startswith('relu')]}")
    # Every named ReLU follows its conv (conv, relu) and pools stand alone.
    index = -1
    for layer in layers:
        index += 1 if layer.startswith("pool") else 2
        if layer == name:
            return index
    raise AssertionError("unreachable")


class BandMapping:
    """Deterministic mapping of ``(B, bands, H, W)`` onto 3-channel images for an RGB network."""

    def __init__(self, rgb_bands: Sequence[int] | None, num_bands: int) -> None:
        if rgb_bands is not None:
            rgb_bands = list(rgb_bands)
            if len(rgb_bands) != 3:
                raise ValueError(f"rgb_bands must list 3 band indices, got {rgb_bands}")
            bad = [b for b in rgb_bands if not 0 <= b < num_bands]
            if bad:
                raise ValueError(f"rgb_bands {rgb_bands}: index {bad[0]} is outside the {num_bands} bands (0-based)")
        self.rgb_bands = rgb_bands
        self.num_bands = num_bands

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, bands, H, W)`` -> ``(B * n, 3, H, W)``, n = 1 (RGB pick) or bands (each band grey)."""
        if x.shape[1] != self.num_bands:
            raise ValueError(f"expected {self.num_bands} bands, got {x.shape[1]}")
        if self.rgb_bands is not None:
            return x[:, self.rgb_bands]
        b, c, h, w = x.shape
        return x.reshape(b * c, 1, h, w).expand(-1, 3, -1, -1)


class _FrozenNet:
    """Holds a network outside ``nn.Module`` registration: not a parameter, buffer or submodule."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval().requires_grad_(False)

    def to(self, device: torch.device) -> None:
        self.net.to(device)


class VGGPerceptualLoss(nn.Module):
    """Weighted L1 distance between VGG feature maps (Johnson et al. 2016; SRGAN/ESRGAN "content" loss).

    Args:
        num_bands: bands of the images (interpolated from the dataset).
        network: ``vgg16`` or ``vgg19`` (ImageNet weights; VGG19 has no offline source here).
        layers: ``{layer_name: weight}``, e.g. ``{"relu5_4": 1.0}`` (ESRGAN uses pre-activation
            features; post-ReLU features are what torchvision exposes cleanly).
        rgb_bands: band indices used as R, G, B, or null for every band as a grey image.
    """

    def __init__(
        self,
        num_bands: int,
        network: str = "vgg16",
        layers: Mapping[str, float] | None = None,
        rgb_bands: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if network not in _VGG_LAYERS:
            raise ValueError(f"network must be one of {sorted(_VGG_LAYERS)}, got {network!r}")
        layers = dict(layers or {"relu2_2": 0.1, "relu3_3": 0.2, "relu4_3": 0.7})
        self.indices = {vgg_layer_index(network, name): float(w) for name, w in layers.items()}
        require_weights(network)
        model = getattr(torchvision.models, network)(weights="IMAGENET1K_V1")
        self._net = _FrozenNet(model.features[: max(self.indices) + 1])
        self.mapping = BandMapping(rgb_bands, num_bands)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self._net.net):
            x = layer(x)
            if i in self.indices:
                out[i] = x
        return out

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        self._net.to(sr.device)
        with torch.autocast(sr.device.type, enabled=False):
            sr_f = self._features(self.mapping(sr.float()))
            with torch.no_grad():
                hr_f = self._features(self.mapping(hr.float()))
            return sum(w * F.l1_loss(sr_f[i], hr_f[i]) for i, w in self.indices.items())


class _TorchvisionWeightsAPI:
    """Stands in for ``torchvision.models`` inside ``lpips.pretrained_networks`` while an LPIPS is built.

    lpips 0.1.4 builds its backbone with ``tv.alexnet(pretrained=True)`` (``vgg16``, ``squeezenet1_1``),
    which torchvision has deprecated since 0.13 with two UserWarnings per call, on every LPIPS
    built. This passes the weights that ``pretrained=True`` stands for (``IMAGENET1K_V1``, the file
    :func:`srgan.weights.require_weights` checks) through the ``weights=`` API instead.
    """

    def __getattr__(self, name: str) -> Callable[..., nn.Module]:
        builder = getattr(torchvision.models, name)

        def build(pretrained: bool = False, **kwargs: Any) -> nn.Module:
            weights = torchvision.models.get_model_weights(builder).IMAGENET1K_V1 if pretrained else None
            return builder(weights=weights, **kwargs)

        return build


# lpips reads ``torchvision.models`` through a module global; one LPIPS is built at a time.
_LPIPS_BUILD_LOCK = threading.Lock()


def build_lpips(net: str) -> nn.Module:
    """``lpips.LPIPS(net=net)`` with its ImageNet backbone loaded through torchvision's ``weights=`` API."""
    import lpips
    from lpips import pretrained_networks

    if not hasattr(pretrained_networks, "tv"):
        raise RuntimeError(
            "lpips.pretrained_networks no longer reads torchvision.models as `tv`: this lpips version is "
            "not the one srgan.losses.perceptual.build_lpips was written for (0.1.4)"
        )
    with _LPIPS_BUILD_LOCK:
        original = pretrained_networks.tv
        pretrained_networks.tv = _TorchvisionWeightsAPI()
        try:
            return lpips.LPIPS(net=net, verbose=False)
        finally:
            pretrained_networks.tv = original


class LPIPSLoss(nn.Module):
    """LPIPS distance (Zhang et al. 2018) through the ``lpips`` package, ``net`` = ``alex`` or ``vgg``.

    Images in [0, 1] are mapped to 3 channels by ``rgb_bands`` (see :class:`BandMapping`) and
    rescaled to lpips' [-1, 1].
    """

    NETWORKS = {"alex": "alexnet", "vgg": "vgg16"}

    def __init__(self, num_bands: int, net: str = "alex", rgb_bands: Sequence[int] | None = None) -> None:
        super().__init__()
        if net not in self.NETWORKS:
            raise ValueError(f"net must be one of {sorted(self.NETWORKS)}, got {net!r}")
        require_weights(self.NETWORKS[net])
        self._net = _FrozenNet(build_lpips(net))
        self.mapping = BandMapping(rgb_bands, num_bands)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        self._net.to(sr.device)
        with torch.autocast(sr.device.type, enabled=False):
            return self._net.net(self.mapping(sr.float()), self.mapping(hr.float()), normalize=True).mean()

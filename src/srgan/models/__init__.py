"""Generators and discriminators: plain ``nn.Module`` classes with typed keyword arguments."""

from srgan.models.discriminators import (
    ESRGANDiscriminator,
    PatchGANDiscriminator,
    SRGANDiscriminator,
    UNetDiscriminator,
)
from srgan.models.generators import (
    LKAGenerator,
    RCABGenerator,
    RRDBGenerator,
    SRGenerator,
    SRResNetGenerator,
    StochasticGenerator,
)

__all__ = [
    "ESRGANDiscriminator",
    "LKAGenerator",
    "PatchGANDiscriminator",
    "RCABGenerator",
    "RRDBGenerator",
    "SRGANDiscriminator",
    "SRGenerator",
    "SRResNetGenerator",
    "StochasticGenerator",
    "UNetDiscriminator",
]

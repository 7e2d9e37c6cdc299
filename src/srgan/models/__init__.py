"""Generators and discriminators: plain ``nn.Module`` classes with typed keyword arguments."""

from srgan.models.discriminators import SRGANDiscriminator
from srgan.models.generators import RCABGenerator

__all__ = ["RCABGenerator", "SRGANDiscriminator"]

"""Loss terms and their weighted composite."""

from srgan.losses.adversarial import GANLoss
from srgan.losses.composite import CompositeLoss
from srgan.losses.pixel import L1Loss

__all__ = ["CompositeLoss", "GANLoss", "L1Loss"]

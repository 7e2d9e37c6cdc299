"""Loss terms and their weighted composite."""

from srgan.losses.adversarial import GANLoss
from srgan.losses.composite import CompositeLoss
from srgan.losses.consistency import LRConsistencyLoss
from srgan.losses.perceptual import LPIPSLoss, VGGPerceptualLoss
from srgan.losses.pixel import CharbonnierLoss, L1Loss, L2Loss
from srgan.losses.spectral import BandMeanLoss, SAMLoss
from srgan.losses.structural import SSIMLoss, TVLoss

__all__ = [
    "BandMeanLoss",
    "CharbonnierLoss",
    "CompositeLoss",
    "GANLoss",
    "L1Loss",
    "L2Loss",
    "LPIPSLoss",
    "LRConsistencyLoss",
    "SAMLoss",
    "SSIMLoss",
    "TVLoss",
    "VGGPerceptualLoss",
]

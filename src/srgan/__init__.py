"""srgan: GAN super-resolution experiments for multispectral Earth-observation imagery."""

from srgan import config as _config  # noqa: F401  (registers the OmegaConf resolvers the configs use)

__version__ = "0.1.0"

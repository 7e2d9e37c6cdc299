"""Degradations that make a low-resolution image from a high-resolution one.

Where no real LR/HR pair exists, LR is simulated from the real HR image, in this order:

1. optional sub-pixel **misregistration** of LR against HR (a shift, fixed or random);
2. optional **point-spread function**: a Gaussian per band, either of a given width or matched to
   Sentinel-2's modulation transfer function (MTF) at the Nyquist frequency of the LR grid;
3. **resampling** by the integer scale: ``box`` (the mean of each ``scale x scale`` block, the pixel
   aggregation used for the sample's reference figures), or antialiased ``bicubic`` / ``bilinear``
   as in PyTorch;
4. optional additive white Gaussian **noise** at a given signal-to-noise ratio.

Gaussian PSF from an MTF value: a Gaussian of standard deviation ``s`` (HR pixels) has
``MTF(f) = exp(-2 pi^2 s^2 f^2)``. At the LR grid's Nyquist frequency ``f = 1 / (2 * scale)`` cycles
per HR pixel this gives ``s = scale * sqrt(-2 ln MTF) / pi`` (the Wald-protocol construction used in
pansharpening, e.g. Aiazzi et al. 2006, and for Sentinel-2 by Lanaras et al. 2018).

Sentinel-2 MTF at Nyquist per band: the values used in the Sentinel-2 sharpening literature
(Ulfarsson et al., "Sentinel-2 Sharpening Using a Reduced-Rank Method", IEEE TGRS 57(9), 2019;
Lin and Bioucas-Dias' SSSS code), taken from ESA's MSI image-quality figures. B10 (cirrus) has none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

METHODS = ("box", "bicubic", "bilinear")

S2_MTF_NYQUIST = {
    "B01": 0.32,
    "B02": 0.26,
    "B03": 0.28,
    "B04": 0.24,
    "B05": 0.38,
    "B06": 0.34,
    "B07": 0.34,
    "B08": 0.26,
    "B8A": 0.23,
    "B09": 0.33,
    "B11": 0.26,
    "B12": 0.22,
}


def mtf_sigma(mtf: float, scale: int) -> float:
    """Gaussian PSF width (HR pixels) whose MTF at the LR Nyquist frequency equals ``mtf``."""
    if not 0.0 < mtf < 1.0:
        raise ValueError(f"an MTF value must be in (0, 1), got {mtf}")
    return scale * math.sqrt(-2.0 * math.log(mtf)) / math.pi


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (the 2-D PSF is their outer product); sums to 1."""
    radius = max(1, math.ceil(3.0 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).float()


def _band_key(name: str) -> str:
    # "B8A" and "B08" are different bands; "B2" and "B02" the same one.
    name = name.upper()
    return f"B{int(name[1:]):02d}" if name[1:].isdigit() else name


class Resample:
    """Downsample by an integer ``scale`` with a fixed, documented kernel (no PSF, no noise)."""

    def __init__(self, scale: int, method: str = "box") -> None:
        if method not in METHODS:
            raise ValueError(f"degradation method must be one of {METHODS}, got {method!r}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale
        self.method = method

    @property
    def margin(self) -> int:
        """HR pixels of context a patch needs on each side for an exact result (a multiple of scale)."""
        return 0 if self.method == "box" else 2 * self.scale

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"HR size {h}x{w} is not a multiple of scale {self.scale}")
        if self.method == "box":
            return F.avg_pool2d(x, self.scale)
        return F.interpolate(
            x, size=(h // self.scale, w // self.scale), mode=self.method, antialias=True, align_corners=False
        )

    def __call__(self, hr: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Degrade ``(bands, H, W)`` or ``(batch, bands, H, W)``; H and W must be multiples of scale."""
        squeeze = hr.dim() == 3
        lr = self._resample(hr.unsqueeze(0) if squeeze else hr)
        return lr.squeeze(0) if squeeze else lr

    def masked(
        self, hr: torch.Tensor, valid: torch.Tensor, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Degrade ``(bands, H, W)`` HR whose pixels are valid where ``valid`` ``(H, W)`` is true.

        Normalised convolution: the (linear) blur and resampling are applied to ``hr * valid`` and
        to ``valid``, and their ratio is each LR pixel's mean over the valid part of its footprint,
        so nodata never leaks into LR values. An LR pixel is valid when at least half of its
        footprint's weight is. Random parts (shift, noise) are drawn exactly as without a mask;
        with every pixel valid the result equals ``self(hr, rng)``.
        """
        if bool(valid.all()):
            lr = self(hr, rng)
            return lr, torch.ones(lr.shape[-2:], dtype=torch.bool)
        weight = valid.to(hr.dtype)[None]
        lr, coverage = self._linear_pair(hr * weight, weight, rng)
        filled = torch.where(coverage > 1e-6, lr / coverage.clamp_min(1e-6), torch.zeros_like(lr))
        lr_valid = (coverage >= 0.5).all(0)
        filled[:, ~lr_valid] = 0.0
        return self._add_noise(filled, rng), lr_valid

    def _linear_pair(
        self, x: torch.Tensor, weight: torch.Tensor, rng: np.random.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The linear part of the degradation applied to an image and to its weight map (per band)."""
        lr, coverage = self._resample(torch.stack([x, weight.expand_as(x)]))
        return lr, coverage

    def _add_noise(self, lr: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        return lr

    def __repr__(self) -> str:
        return f"Resample(scale={self.scale}, method={self.method!r})"


class Degradation(Resample):
    """Misregistration, PSF blur, resampling and noise, each optional, seeded.

    Args:
        scale: the integer factor.
        method: the resampling kernel after the PSF (``box``, ``bicubic``, ``bilinear``).
        psf: None (no blur), ``"s2_mtf"`` (per-band width from :data:`S2_MTF_NYQUIST`, which needs
            ``band_names``), one sigma in HR pixels, or one sigma per band.
        band_names: the bands, in order (for ``psf="s2_mtf"``).
        snr: additive white Gaussian noise with standard deviation ``mean(|band|) / snr`` per band and
            image (the EO convention: mean signal over noise, a ratio, not dB); None: no noise.
        shift: a fixed misregistration ``[dy, dx]`` of LR against HR, in LR pixels.
        max_shift: else a random shift, uniform in ``[-max_shift, max_shift]`` LR pixels per axis and image.
        seed: seeds noise and random shifts when the caller passes no generator.
    """

    def __init__(
        self,
        scale: int,
        method: str = "box",
        psf: str | float | Sequence[float] | None = None,
        band_names: Sequence[str] | None = None,
        snr: float | None = None,
        shift: Sequence[float] | None = None,
        max_shift: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(scale, method)
        self.sigmas = self._sigmas(psf, band_names)
        self.psf = psf
        if snr is not None and snr <= 0:
            raise ValueError(f"dataset.degradation.snr must be > 0 or null, got {snr}")
        if max_shift < 0 or (shift is not None and len(shift) != 2):
            raise ValueError("dataset.degradation.shift must be [dy, dx] and max_shift >= 0")
        self.snr, self.max_shift, self.seed = snr, float(max_shift), seed
        self.shift = tuple(float(s) for s in shift) if shift is not None else None
        self._rng = np.random.default_rng(seed)

    def _sigmas(self, psf, band_names) -> list[float] | None:
        if psf is None:
            return None
        if psf == "s2_mtf":
            if not band_names:
                raise ValueError("dataset.degradation.psf=s2_mtf needs the band names (dataset.bands as names)")
            sigmas = []
            for name in band_names:
                key = _band_key(str(name))
                if key not in S2_MTF_NYQUIST:
                    raise ValueError(
                        f"dataset.degradation.psf=s2_mtf: no Sentinel-2 MTF value for band {name!r} "
                        f"(known: {', '.join(S2_MTF_NYQUIST)}); give psf as a sigma instead"
                    )
                sigmas.append(mtf_sigma(S2_MTF_NYQUIST[key], self.scale))
            return sigmas
        if isinstance(psf, str):
            raise ValueError(f"dataset.degradation.psf must be null, 's2_mtf', a sigma or a list, got {psf!r}")
        values = [float(psf)] if isinstance(psf, (int, float)) else [float(s) for s in psf]
        if any(s <= 0 for s in values):
            raise ValueError(f"dataset.degradation.psf sigmas must be > 0, got {values}")
        return values

    @property
    def margin(self) -> int:
        need = super().margin
        if self.sigmas:
            need = max(need, math.ceil(3.0 * max(self.sigmas)) + 1)
        shift = self.max_shift if self.shift is None else max(abs(s) for s in self.shift)
        need += math.ceil(shift * self.scale)
        return need + (-need % self.scale)

    def kernels(self, bands: int) -> list[torch.Tensor] | None:
        """The per-band 1-D PSF taps (None without a PSF)."""
        if self.sigmas is None:
            return None
        sigmas = self.sigmas * bands if len(self.sigmas) == 1 else self.sigmas
        if len(sigmas) != bands:
            raise ValueError(f"dataset.degradation.psf gives {len(sigmas)} sigmas for {bands} bands")
        return [gaussian_kernel(s) for s in sigmas]

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for b, taps in enumerate(self.kernels(x.shape[1])):
            r = taps.numel() // 2
            band = F.pad(x[:, b : b + 1], (r, r, r, r), mode="reflect")
            band = F.conv2d(band, taps.to(x).view(1, 1, 1, -1))
            out.append(F.conv2d(band, taps.to(x).view(1, 1, -1, 1)))
        return torch.cat(out, dim=1)

    def _shift(self, x: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
        # Bilinear resampling at positions moved by (dy, dx) LR px = (dy, dx) * scale HR px.
        n, _, h, w = x.shape
        ys = torch.arange(h, dtype=x.dtype, device=x.device) + dy * self.scale
        xs = torch.arange(w, dtype=x.dtype, device=x.device) + dx * self.scale
        gy, gx = torch.meshgrid(2 * ys / (h - 1) - 1, 2 * xs / (w - 1) - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

    def __call__(self, hr: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        squeeze = hr.dim() == 3
        x = (hr.unsqueeze(0) if squeeze else hr).float()
        rng = rng if rng is not None else self._rng
        lr = self._linear(x, self._draw_shift(rng))
        lr = self._add_noise(lr, rng)
        return lr.squeeze(0) if squeeze else lr

    def _draw_shift(self, rng: np.random.Generator) -> tuple[float, float] | None:
        if self.shift is None and self.max_shift <= 0:
            return None
        dy, dx = self.shift if self.shift is not None else rng.uniform(-self.max_shift, self.max_shift, 2)
        return float(dy), float(dx)

    def _linear(self, x: torch.Tensor, shift: tuple[float, float] | None) -> torch.Tensor:
        """Shift, blur and resample ``(batch, bands, H, W)``: the linear part of the degradation."""
        if shift is not None:
            x = self._shift(x, *shift)
        if self.sigmas is not None:
            x = self._blur(x)
        return self._resample(x)

    def _linear_pair(
        self, x: torch.Tensor, weight: torch.Tensor, rng: np.random.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self._draw_shift(rng if rng is not None else self._rng)
        pair = torch.stack([x, weight.expand_as(x)]).float()  # the weight map per band (per-band PSFs)
        lr, coverage = self._linear(pair, shift)
        return lr, coverage

    def _add_noise(self, lr: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        if self.snr is None:
            return lr
        rng = rng if rng is not None else self._rng
        level = lr.abs().mean(dim=(-2, -1), keepdim=True) / self.snr
        noise = torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32)).to(lr.device)
        return lr + noise * level

    def __repr__(self) -> str:
        return (
            f"Degradation(scale={self.scale}, method={self.method!r}, psf={self.psf!r}, snr={self.snr}, "
            f"shift={self.shift}, max_shift={self.max_shift})"
        )

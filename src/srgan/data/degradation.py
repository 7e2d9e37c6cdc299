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
from dataclasses import dataclass
from typing import Any

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

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic linear part on a batch ``(batch, bands, H, W)`` (differentiable; no shift, no
        noise): what :class:`srgan.losses.LRConsistencyLoss` applies to SR."""
        return self._resample(x)

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

    def operator(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x.float(), None)

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


ORDERS = ("blur_resize", "resize_blur")


def _range(value: Any, key: str, low: float, name: str) -> tuple[float, float] | None:
    """A ``[lo, hi]`` setting (one number: a fixed value) checked against its lower bound; None stays None."""
    if value is None:
        return None
    pair = [float(value)] * 2 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(pair) != 2 or not low <= pair[0] <= pair[1]:
        raise ValueError(f"dataset.degradation.{key} must be [lo, hi] with {low} <= lo <= hi ({name}), got {value!r}")
    return pair[0], pair[1]


class RandomDegradation(Degradation):
    """A new degradation for every training image, drawn and applied on the training device (kornia).

    Per image (``B`` draws a batch): the PSF of each band is its nominal Gaussian (``psf``: ``s2_mtf``
    or sigmas, as in :class:`Degradation`) with its width multiplied by a factor uniform in
    ``psf_width``, made anisotropic (major / minor sigma ratio uniform in ``anisotropy``, the product
    of the two sigmas kept, so the blurred area stays) and turned by an angle uniform in [0, pi);
    LR is misregistered by a shift uniform in ``[-max_shift, max_shift]`` LR pixels per axis; the
    noise has a signal-to-noise ratio log-uniform in ``snr`` (mean |signal| / noise std per band;
    null: none). ``orders`` lists the orders drawn from, once per batch: ``blur_resize`` (PSF on the
    HR grid, then the resampling ``method``: the physical order) or ``resize_blur`` (resampling first,
    then the PSF scaled to the LR grid).

    Held-out areas (validation, test) are degraded with the nominal operator: the same PSF at width
    factor 1, isotropic, no shift, no noise, so validation numbers stay comparable between runs.
    Training patches carry their HR context (``margin``) and the loop calls :meth:`degrade_batch`
    on the device with a generator seeded by (``seed``, process, batch position): a resumed run
    draws the same degradations as an uninterrupted one.
    """

    on_device = True

    def __init__(
        self,
        scale: int,
        method: str = "box",
        psf: str | float | Sequence[float] | None = "s2_mtf",
        band_names: Sequence[str] | None = None,
        psf_width: Sequence[float] | float = (0.75, 1.5),
        anisotropy: Sequence[float] | float = (1.0, 2.0),
        snr: Sequence[float] | float | None = (40.0, 400.0),
        max_shift: float = 0.5,
        orders: Sequence[str] = ("blur_resize",),
        seed: int = 0,
    ) -> None:
        if psf is None:
            raise ValueError("dataset.degradation.psf: a random degradation needs a nominal PSF (s2_mtf or sigmas)")
        super().__init__(scale, method, psf, band_names, seed=seed)
        self.psf_width = _range(psf_width, "psf_width", 1e-3, "a factor on the nominal width")
        self.anisotropy = _range(anisotropy, "anisotropy", 1.0, "major / minor sigma")
        self.snr_range = _range(snr, "snr", 1e-6, "mean signal / noise std")
        if max_shift < 0:
            raise ValueError(f"dataset.degradation.max_shift must be >= 0, got {max_shift}")
        self.random_shift = float(max_shift)
        orders = [str(o) for o in ([orders] if isinstance(orders, str) else orders)]
        if not orders or any(o not in ORDERS for o in orders):
            raise ValueError(f"dataset.degradation.orders must list some of {ORDERS}, got {orders}")
        self.orders = orders

    @property
    def kernel_radius(self) -> int:
        """HR pixels of the largest PSF drawn (3 major sigmas), before its shift."""
        widest = max(self.sigmas) * self.psf_width[1] * math.sqrt(self.anisotropy[1])
        return max(1, math.ceil(3.0 * widest))

    @property
    def margin(self) -> int:
        need = max(super().margin, self.kernel_radius + 1 + math.ceil(self.random_shift * self.scale))
        return need + (-need % self.scale)

    def draw(self, batch: int, bands: int, generator: torch.Generator, device: torch.device) -> DrawnDegradation:
        """One batch's parameters, drawn from ``generator`` (on ``device``)."""

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)

        nominal = torch.tensor(self.sigmas * bands if len(self.sigmas) == 1 else self.sigmas, device=device)
        if nominal.numel() != bands:
            raise ValueError(f"dataset.degradation.psf gives {nominal.numel()} sigmas for {bands} bands")
        sigma = nominal[None] * uniform(*self.psf_width, batch, 1)
        ratio = uniform(*self.anisotropy, batch, 1).sqrt()
        angle = uniform(0.0, math.pi, batch, 1).expand(batch, bands)
        shift = uniform(-self.random_shift, self.random_shift, batch, 2)
        snr = None
        if self.snr_range is not None:
            lo, hi = math.log(self.snr_range[0]), math.log(self.snr_range[1])
            snr = uniform(lo, hi, batch, 1, 1, 1).exp()
        order = self.orders[int(torch.randint(len(self.orders), (1,), generator=generator, device=device))]
        return DrawnDegradation(self, sigma * ratio, sigma / ratio, angle, shift, snr, order)

    def degrade_batch(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        """LR for a batch of training patches with context (``hr_context``, ``valid_context``): HR and
        its validity cropped to the patch, plus ``degrade``, the drawn linear operator (for
        :class:`srgan.losses.LRConsistencyLoss`)."""
        context = batch["hr_context"].float()
        generator = torch.Generator(device=context.device).manual_seed(seed)
        drawn = self.draw(context.shape[0], context.shape[1], generator, context.device)
        weight = batch["valid_context"].to(context.dtype)[:, None]
        if bool(weight.min() > 0):
            lr = drawn(context)
        else:  # normalised convolution, as in Resample.masked: nodata never leaks into LR values
            lr, coverage = drawn(torch.cat([context * weight, weight.expand_as(context)])).chunk(2)
            lr = torch.where(coverage >= 0.5, lr / coverage.clamp_min(1e-6), torch.zeros_like(lr))
        q = self.margin // self.scale
        lr = drawn.noise(lr[..., q : lr.shape[-2] - q, q : lr.shape[-1] - q], generator)
        out = {k: v for k, v in batch.items() if k not in ("hr_context", "valid_context")}
        out.update(lr=lr.contiguous(), degrade=drawn)
        return out

    def __repr__(self) -> str:
        return (
            f"RandomDegradation(scale={self.scale}, method={self.method!r}, psf={self.psf!r}, "
            f"psf_width={self.psf_width}, anisotropy={self.anisotropy}, snr={self.snr_range}, "
            f"max_shift={self.random_shift}, orders={self.orders})"
        )


@dataclass
class DrawnDegradation:
    """One batch's random degradation: per image and band the PSF's major and minor sigma (HR pixels)
    and angle, per image the shift (LR pixels, [dy, dx]) and SNR, one order. Calling it applies the
    linear part (shift, PSF, resampling; differentiable); :meth:`noise` adds the noise."""

    owner: RandomDegradation
    major: torch.Tensor
    minor: torch.Tensor
    angle: torch.Tensor
    shift: torch.Tensor
    snr: torch.Tensor | None
    order: str

    def kernels(self, grid_scale: float = 1.0) -> torch.Tensor:
        """Normalised 2-D PSFs ``(batch * bands, k, k)`` on a grid ``grid_scale`` HR pixels wide,
        centred on the image's shift: a shifted Gaussian is the PSF of the misregistered image, so
        the shift costs no resampling of its own."""
        owner = self.owner
        radius = max(1, math.ceil((owner.kernel_radius + owner.random_shift * owner.scale) / grid_scale))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=self.major.device)
        bands = self.major.shape[1]
        offset = (self.shift * owner.scale / grid_scale).repeat_interleave(bands, 0)  # (batch * bands, [dy, dx])
        yy = x[None, :, None] - offset[:, 0, None, None]
        xx = x[None, None, :] - offset[:, 1, None, None]
        cos, sin = self.angle.cos().flatten()[:, None, None], self.angle.sin().flatten()[:, None, None]
        u, v = cos * xx + sin * yy, -sin * xx + cos * yy
        a = (self.major.flatten() / grid_scale)[:, None, None]
        b = (self.minor.flatten() / grid_scale)[:, None, None]
        taps = torch.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2))
        return taps / taps.sum(dim=(-2, -1), keepdim=True)

    def _blur(self, x: torch.Tensor, grid_scale: float) -> torch.Tensor:
        from kornia.filters import filter2d

        n, c, h, w = x.shape
        repeat = n // self.major.shape[0]  # an image stacked with its weight map shares its PSFs
        kernels = self.kernels(grid_scale).repeat(repeat, 1, 1)
        return filter2d(x.reshape(n * c, 1, h, w), kernels, border_type="reflect").reshape(n, c, h, w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.order == "blur_resize" and self.owner.method == "box":
            return self._blur_box(x)
        if self.order == "blur_resize":
            return self.owner._resample(self._blur(x, 1.0))
        return self._blur(self.owner._resample(x), float(self.owner.scale))

    def _blur_box(self, x: torch.Tensor) -> torch.Tensor:
        """PSF then block means as one strided convolution with the PSF convolved with the block
        (the LR pixels alone are computed: ``scale^2`` times less work; equal to ``_blur`` then
        ``avg_pool2d`` to rounding)."""
        n, c, h, w = x.shape
        s, kernels = self.owner.scale, self.kernels(1.0)
        radius = kernels.shape[-1] // 2
        box = torch.ones(1, 1, s, s, dtype=kernels.dtype, device=kernels.device) / s**2
        merged = F.conv2d(kernels[:, None], box, padding=s - 1)  # (n*c, 1, k + s - 1, k + s - 1), flipped box = box
        merged = merged.repeat(n // self.major.shape[0], 1, 1, 1)
        padded = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
        return F.conv2d(padded, merged, stride=s, groups=n * c).reshape(n, c, h // s, w // s)

    def noise(self, lr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.snr is None:
            return lr
        level = lr.abs().mean(dim=(-2, -1), keepdim=True) / self.snr
        return lr + torch.randn(lr.shape, generator=generator, device=lr.device) * level

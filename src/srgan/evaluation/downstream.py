"""What an analyst would compute from the output: spectral indices and simple thematic maps.

Indices (normalised differences, from bands found by name; Sentinel-2 names and the NAIP-style
``R, G, B, NIR`` are both recognised):

- NDVI = (NIR - red) / (NIR + red) (Rouse et al. 1974): vegetation;
- NDWI = (green - NIR) / (green + NIR) (McFeeters 1996): open water where > 0;
- NBR2 = (SWIR1 - SWIR2) / (SWIR1 + SWIR2) (the USGS Landsat NBR2; Sentinel-2 B11, B12): moisture,
  burn severity; the index for SWIR-only sets;
- NDMI = (NIR - SWIR1) / (NIR + SWIR1) (Gao 1996, as NDWI of the SWIR): canopy water, where both exist.

Each index from the output is compared with the same index from HR (MAE, RMSE). The thematic maps
are (a) land / water from NDWI > 0 where NDWI exists, and (b) k-means clusters of the HR spectra
(k-means++ seeding and Lloyd iterations, seeded): the output's pixels are assigned to the HR
centroids, and the agreement is the share of pixels that fall in the same class as HR (for water
also the intersection over union), so a user sees whether SR changes what a map would say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# index -> (positive band, negative band), each a tuple of accepted names
INDICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ndvi": (("B08", "B8A", "NIR", "N"), ("B04", "R", "RED")),
    "ndwi": (("B03", "G", "GREEN"), ("B08", "B8A", "NIR", "N")),
    "nbr2": (("B11", "SWIR1"), ("B12", "SWIR2")),
    "ndmi": (("B08", "B8A", "NIR", "N"), ("B11", "SWIR1")),
}


def _find(band_names: Sequence[str], accepted: tuple[str, ...]) -> int | None:
    upper = [str(b).upper() for b in band_names]
    for name in accepted:
        if name in upper:
            return upper.index(name)
    return None


def available_indices(band_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The indices these bands allow, with the positions of their two bands."""
    out = {}
    for name, (pos, neg) in INDICES.items():
        a, b = _find(band_names, pos), _find(band_names, neg)
        if a is not None and b is not None and a != b:
            out[name] = (a, b)
    return out


def normalized_difference(image: torch.Tensor, a: int, b: int, eps: float = 1e-6) -> torch.Tensor:
    """(band a - band b) / (band a + band b) of a ``(bands, H, W)`` image in physical units
    (NaN where the sum is not positive, e.g. nodata). Negative values are taken as 0, as in the
    unsigned GeoTIFF that ``srgan-infer`` writes: a slightly negative SR value would otherwise
    send the index far outside [-1, 1]."""
    x, y = image[a].double().clamp_min(0), image[b].double().clamp_min(0)
    total = x + y
    return torch.where(total > eps, (x - y) / total.clamp_min(eps), torch.full_like(total, math.nan)).float()


# Without NDWI's bands, water is where HR's SWIR1 reflectance is below this: open water absorbs
# almost all SWIR (clear water reflects well under 0.03 at 1.6 um; soil, vegetation and built-up
# land reflect 0.1 - 0.4), so a dark-SWIR threshold is the usual water test of SWIR-only data.
SWIR_WATER_BELOW = 0.03


def water_mask(hr: torch.Tensor, band_names: Sequence[str]) -> torch.Tensor | None:
    """HR's open water ``(H, W)`` in physical units: NDWI > 0 (McFeeters 1996) where green and NIR
    exist, else SWIR1 reflectance < :data:`SWIR_WATER_BELOW`; None when neither can be computed."""
    bands = available_indices(band_names)
    if "ndwi" in bands:
        return normalized_difference(hr, *bands["ndwi"]) > 0
    swir1 = _find(band_names, ("B11", "SWIR1"))
    return None if swir1 is None else hr[swir1] < SWIR_WATER_BELOW


def index_errors(
    pred: torch.Tensor,
    hr: torch.Tensor,
    band_names: Sequence[str],
    valid: torch.Tensor | None = None,
    water: torch.Tensor | None = None,
) -> dict[str, float]:
    """``<index>_mae`` and ``<index>_rmse`` of each available index of ``pred`` against HR's, over
    the ``valid`` pixels where both indices are defined; with ``water`` (:func:`water_mask`) also
    ``<index>_mae_water`` and ``<index>_mae_land``: a ratio index of two dark bands is where SR goes
    wrong first, and a mean over a mostly-land area hides it."""
    out = {}
    for name, (a, b) in available_indices(band_names).items():
        diff = normalized_difference(pred, a, b) - normalized_difference(hr, a, b)
        keep = torch.isfinite(diff) if valid is None else torch.isfinite(diff) & valid.bool()
        if not bool(keep.any()):
            continue
        out[f"{name}_mae"] = float(diff[keep].double().abs().mean())
        out[f"{name}_rmse"] = float(diff[keep].double().pow(2).mean().sqrt())
        if water is not None:
            for part, where in (("water", keep & water.bool()), ("land", keep & ~water.bool())):
                if bool(where.any()):
                    out[f"{name}_mae_{part}"] = float(diff[where].double().abs().mean())
    return out


def kmeans(points: torch.Tensor, k: int, iterations: int = 50, seed: int = 0) -> torch.Tensor:
    """Centroids ``(k, d)`` of ``points`` ``(n, d)``: k-means++ seeding, then Lloyd iterations."""
    if points.shape[0] < k:
        raise ValueError(f"k-means with k={k} needs at least {k} points, got {points.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    points = points.double()
    centroids = points[torch.randint(points.shape[0], (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(points, centroids).min(1).values.pow(2)
        if float(d2.sum()) == 0:  # fewer distinct points than k: repeat one
            choice = torch.randint(points.shape[0], (1,), generator=g)
        else:
            choice = torch.multinomial(d2 / d2.sum(), 1, generator=g)
        centroids = torch.cat([centroids, points[choice]])
    for _ in range(iterations):
        labels = torch.cdist(points, centroids).argmin(1)
        moved = centroids.clone()
        for j in range(k):
            members = points[labels == j]
            if members.numel():
                moved[j] = members.mean(0)
        if torch.allclose(moved, centroids):
            break
        centroids = moved
    return centroids.float()


def assign(image: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid label of every pixel of a ``(bands, H, W)`` image: ``(H, W)``."""
    pixels = image.flatten(1).T.float()
    return torch.cdist(pixels, centroids.float()).argmin(1).reshape(image.shape[1:])


class ThematicAgreement:
    """k-means classes fitted on HR (and the NDWI water mask) for one area; compares outputs with HR."""

    def __init__(
        self, hr: torch.Tensor, band_names: Sequence[str], k: int = 6, seed: int = 0, valid: torch.Tensor | None = None
    ) -> None:
        self.k = k
        self.valid = torch.ones(hr.shape[-2:], dtype=torch.bool) if valid is None else valid.bool()
        pixels = hr.flatten(1).T
        ok = torch.isfinite(pixels).all(1) & self.valid.flatten()
        sample = pixels[ok]
        if sample.shape[0] > 20000:  # fitted on a fixed subsample; every pixel is assigned
            sample = sample[torch.randperm(sample.shape[0], generator=torch.Generator().manual_seed(seed))[:20000]]
        self.centroids = kmeans(sample, k, seed=seed)
        self.hr_labels = assign(hr, self.centroids)
        self.water_bands = available_indices(band_names).get("ndwi")
        self.hr_water = self._water(hr) if self.water_bands else None

    def _water(self, image: torch.Tensor) -> torch.Tensor:
        return normalized_difference(image, *self.water_bands) > 0

    def compare(self, pred: torch.Tensor) -> dict[str, float]:
        """Agreement with HR's classes over the valid pixels."""
        v = self.valid
        same = (assign(pred, self.centroids) == self.hr_labels)[v]
        out = {f"kmeans{self.k}_agreement": float(same.float().mean()) if same.numel() else math.nan}
        if self.hr_water is not None:
            water, hr_water = self._water(pred)[v], self.hr_water[v]
            out["water_agreement"] = float((water == hr_water).float().mean()) if water.numel() else math.nan
            union = (water | hr_water).sum()
            out["water_iou"] = float((water & hr_water).sum() / union) if union > 0 else math.nan
        return out

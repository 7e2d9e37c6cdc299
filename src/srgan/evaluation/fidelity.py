"""srgan's own fidelity measures of what a super-resolution model did to the LR image.

They follow the ideas of the opensr-test benchmark (Aybar et al., "A Comprehensive Benchmark for
Optical Remote Sensing Image Super-Resolution", IEEE GRSL 21, 2024) but are not its numbers: for
those, ``srgan-eval benchmark=opensr_test`` runs the package itself (:mod:`.benchmark`). These are
computed on srgan's own terms (the evaluation's border and nodata mask, the dataset's degradation):

- **consistency**: the SR image degraded back to the LR grid with the dataset's own degradation
  (noise and random misregistration left out) against the LR input: ``reflectance`` error (mean
  absolute difference), ``spectral`` error (spectral angle, degrees) and ``spatial`` error (the
  sub-pixel shift between the two, by phase correlation over all bands, in LR pixels).
- **synthesis**: the high-frequency detail the model added, mean ``|SR - bicubic(LR)|``, and the
  same relative to the detail that HR has over bicubic (``synthesis_ratio``: 0 adds nothing, 1 adds
  as much as there really is).
- **correctness shares**: per pixel, with ``d_ref = |bicubic(LR) - HR|``, ``d_im = |SR - HR| / d_ref``
  and ``d_om = |SR - bicubic(LR)| / d_ref`` (L1, mean over bands), the scores
  ``improvement = d_im + d_om (1 - exp(-l_im H))``, ``omission = d_om + d_im (1 - exp(-l_om H))`` with
  ``H = d_im + d_om - 1``, and ``hallucination = exp(-l_ha d_im d_om)``; each pixel is classified by
  its lowest score and the shares of pixels are reported (``improvement_share``, ...), with
  ``l_im = l_om = 0.8``, ``l_ha = 0.4`` (opensr-test 0.2's values). A pixel counts when any of the
  three distances ``|up - HR|``, ``|SR - HR|``, ``|SR - up|`` reaches ``min_reference``: a pixel where
  HR is close to bicubic but SR is not is where added detail is invented, so it must count.

How they differ from opensr-test 1.3.3's defaults (``opensr_test.Config()``), so that neither is
mistaken for the other: opensr-test first harmonises SR to HR (histogram matching, then a
phase-correlation alignment), upsamples LR bilinearly with antialiasing (here: bicubic) and takes
SR to LR bilinearly with antialiasing (here: the dataset's degradation), crops 16 HR pixels (here:
``srgan-eval border=``, 4), measures correctness with the normalised difference ``nd`` (here: L1),
scores with lambda 0.05 / 0.05 / 0.05 and reports softmin-weighted (T = 0.25) mean scores
``im_metric``/``om_metric``/``ha_metric`` (here: hard-argmin pixel shares), masks pixels where every
distance is below the 75th percentile of ``d_ref`` (here: an absolute ``min_reference``), and finds
the spatial shift on the RGB bands with satalign's phase correlation. It has no nodata mask; these
measures count only pixels that hold data.

All inputs are ``(bands, H, W)`` tensors in physical units (e.g. reflectance); ``border`` HR pixels
are ignored at each edge. An optional ``valid`` ``(H, W)`` mask (HR grid; ``lr_valid`` on the LR
grid) restricts every measure to pixels that hold data: nodata never enters a mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from srgan.models.blocks import upsample_image


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def _valid(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(x.shape[-2:], dtype=torch.bool) if valid is None else valid.bool()


def _mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``(bands, H, W)`` or ``(H, W)`` over the valid pixels (NaN when there is none)."""
    values = x[..., valid]
    return values.mean() if values.numel() else torch.tensor(math.nan)


def spectral_angle_deg(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8, valid: torch.Tensor | None = None) -> float:
    """Mean per-pixel angle between the band vectors of ``a`` and ``b`` (degrees), over ``valid``."""
    cos = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(eps)
    return math.degrees(float(_mean(torch.arccos(cos.clamp(-1.0, 1.0)), _valid(a, valid))))


def phase_correlation_shift(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(dy, dx)`` in pixels that best aligns ``b`` to ``a`` (band-averaged cross-power spectrum,
    peak refined by a parabola through its neighbours)."""
    fa, fb = torch.fft.fft2(a.double() - a.double().mean()), torch.fft.fft2(b.double() - b.double().mean())
    cross = (fa * fb.conj()).sum(0)
    corr = torch.fft.ifft2(cross / cross.abs().clamp_min(1e-12)).real
    h, w = corr.shape
    peak = int(torch.argmax(corr))
    py, px = divmod(peak, w)

    def refine(c_minus: float, c0: float, c_plus: float) -> float:
        denom = c_minus - 2 * c0 + c_plus
        return 0.0 if abs(denom) < 1e-12 else 0.5 * (c_minus - c_plus) / denom

    dy = py + refine(float(corr[(py - 1) % h, px]), float(corr[py, px]), float(corr[(py + 1) % h, px]))
    dx = px + refine(float(corr[py, (px - 1) % w]), float(corr[py, px]), float(corr[py, (px + 1) % w]))
    return (dy - h if dy > h / 2 else dy), (dx - w if dx > w / 2 else dx)


def consistency(
    sr: torch.Tensor,
    lr: torch.Tensor,
    degrade,
    border: int = 0,
    valid: torch.Tensor | None = None,
    lr_valid: torch.Tensor | None = None,
) -> dict[str, float]:
    """SR degraded back to the LR grid against LR, on the LR pixels that hold data (SR over nodata
    is left out of the degradation by :meth:`srgan.data.degradation.Resample.masked`)."""
    if valid is None or bool(valid.all()):
        back, back_valid = degrade(sr), torch.ones(lr.shape[-2:], dtype=torch.bool)
    else:
        back, back_valid = degrade.masked(sr, valid.bool())
    b = border // max(1, sr.shape[-1] // lr.shape[-1])
    keep = _crop(back_valid & _valid(lr, lr_valid), b)
    back, lr = _crop(back, b), _crop(lr, b)
    # Phase correlation needs whole images: missing pixels take the image's valid mean.
    fill = [torch.where(keep, x, _mean(x, keep).nan_to_num()) for x in (lr, back)]
    dy, dx = phase_correlation_shift(*fill) if bool(keep.any()) else (math.nan, math.nan)
    return {
        "consistency_reflectance_l1": float(_mean((back - lr).abs(), keep)),
        "consistency_spectral_sam_deg": spectral_angle_deg(back, lr, valid=keep) if lr.shape[0] > 1 else 0.0,
        "consistency_spatial_shift_px": math.hypot(dy, dx),
    }


def synthesis(
    sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor, scale: int, border: int = 0, valid: torch.Tensor | None = None
) -> dict[str, float]:
    up = upsample_image(lr[None], scale, "bicubic")[0]
    keep = _crop(_valid(hr, valid), border)
    added = _mean(_crop((sr - up).abs(), border), keep)
    present = _mean(_crop((hr - up).abs(), border), keep).clamp_min(1e-12)
    return {"synthesis_l1": float(added), "synthesis_ratio": float(added / present)}


def correctness_scores(
    d_im: torch.Tensor, d_om: torch.Tensor, l_im: float = 0.8, l_om: float = 0.8, l_ha: float = 0.4
) -> torch.Tensor:
    """``(3, ...)`` improvement, omission and hallucination scores (lower = closer to that case)."""
    h = d_im + d_om - 1
    return torch.stack(
        [
            d_im + d_om * (1 - torch.exp(-l_im * h)),
            d_om + d_im * (1 - torch.exp(-l_om * h)),
            torch.exp(-l_ha * d_im * d_om),
        ]
    )


def correctness(
    sr: torch.Tensor,
    lr: torch.Tensor,
    hr: torch.Tensor,
    scale: int,
    border: int = 0,
    min_reference: float = 0.002,
    valid: torch.Tensor | None = None,
) -> dict[str, float]:
    """Shares of the counted pixels classified as improvement, omission and hallucination; a pixel
    counts when any of its three distances reaches ``min_reference`` (physical units)."""
    up = upsample_image(lr[None], scale, "bicubic")[0]
    d_ref = _crop((up - hr).abs().mean(0), border)
    to_hr = _crop((sr - hr).abs().mean(0), border)
    added = _crop((sr - up).abs().mean(0), border)
    moved = torch.maximum(torch.maximum(d_ref, to_hr), added) >= min_reference
    counted = moved & _crop(_valid(hr, valid), border)
    n = int(counted.sum())
    keys = ("improvement_share", "omission_share", "hallucination_share")
    if n == 0:
        return {**dict.fromkeys(keys, math.nan), "correctness_pixels": 0}
    reference = d_ref[counted].clamp_min(1e-12)
    label = correctness_scores(to_hr[counted] / reference, added[counted] / reference).argmin(0)
    shares = torch.bincount(label, minlength=3).double() / n
    return {**{k: float(v) for k, v in zip(keys, shares)}, "correctness_pixels": n}


def ergas(
    pred: torch.Tensor, target: torch.Tensor, scale: int, valid: torch.Tensor | None = None
) -> tuple[float, list[float]]:
    """ERGAS (Wald 2000): ``100 / scale * sqrt(mean_b (RMSE_b / mean_b)^2)``; also each band's term
    ``100 / scale * RMSE_b / mean_b``. Inputs ``(bands, H, W)``, over the ``valid`` pixels."""
    keep = _valid(pred, valid)
    if not bool(keep.any()):
        return math.nan, [math.nan] * pred.shape[0]
    p, t = pred.double()[:, keep], target.double()[:, keep]
    rmse = ((p - t) ** 2).mean(dim=-1).sqrt()
    rel = rmse / t.mean(dim=-1).abs().clamp_min(1e-12)
    return float(100 / scale * rel.pow(2).mean().sqrt()), (100 / scale * rel).tolist()


def clean_degradation(degradation):
    """The dataset's degradation without its random parts (noise, misregistration), for consistency.
    An integer (a dataset of real pairs has no degradation model) means block means at that scale."""
    from srgan.data.degradation import Degradation, Resample

    if isinstance(degradation, Degradation):
        return Degradation(degradation.scale, degradation.method, psf=degradation.sigmas)
    if isinstance(degradation, Resample):
        return degradation
    return Resample(int(degradation), "box")


def quantile_maps(source: np.ndarray, reference: np.ndarray, points: int = 1024) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per band, (source quantiles, reference quantiles): ``np.interp(x, *map)`` gives ``x`` the
    reference band's histogram. Inputs ``(bands, n)`` samples."""
    q = np.linspace(0, 100, points)
    return [(np.percentile(s, q), np.percentile(r, q)) for s, r in zip(source, reference)]


def match_histograms(
    source: torch.Tensor,
    reference: torch.Tensor,
    reference_valid: torch.Tensor | None = None,
    source_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``source`` ``(bands, H, W)`` with each band's histogram matched to ``reference``'s band (the
    histograms of their valid pixels)."""
    maps = quantile_maps(
        source[:, _valid(source, source_valid)].numpy(), reference[:, _valid(reference, reference_valid)].numpy()
    )
    out = [np.interp(band.numpy(), sq, rq) for band, (sq, rq) in zip(source, maps)]
    return torch.from_numpy(np.stack(out).astype(np.float32))

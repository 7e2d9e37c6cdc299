"""Per-pixel uncertainty: several SR samples per input, their mean and spread, and their calibration.

Three ways to draw samples (the ``uncertainty`` config group, ``conf/uncertainty/``: each option names
its class with ``_target_``; :func:`load_sampler` builds it from plain values, one of the four):

- ``noise``: the stochastic generator (``generator=stochastic``) run ``samples`` times, sample k
  with the noise drawn from seed ``seed + k`` (reproducible, the same for every tile of a scene);
- ``ensemble``: the model and the ``members`` (other model folders or ``runs:/`` URIs trained for
  the same bands, scale and normalisation: other seeds, other checkpoints), one pass each;
- ``tta``: the model seen through the eight flips and quarter turns of D4 (:mod:`srgan.tta`), one
  pass each, back-transformed: the mean is ``tta=d4``'s self-ensemble, the spread its disagreement.

With ``tta=d4`` a noise or ensemble sampler runs every sample as its D4 self-ensemble
(:meth:`SampleSpread.with_tta`: 8 passes per sample); ``uncertainty=tta`` already is the D4 mean, so
``tta=d4`` leaves it as it is.

:class:`SampleSpread` wraps them as one module whose output holds, per band, the sample mean and
then the sample standard deviation (``2 x bands`` channels), so the tiled and streamed inference
paths blend it like any SR output. Mean and spread are accumulated with Welford's update in fp32
(no cancellation for spreads far below the signal).

Calibration (:class:`Calibration`) treats mean +- z std as the central interval of a Gaussian
predictive distribution: the share of HR values inside it at nominal 68.27 % (z = 1) and 95 %
(z = 1.96), the same for a range of levels (a reliability curve: observed against nominal), the
Pearson correlation of the predicted spread with the absolute error, and the ratio of the RMS
spread to the RMS error (1 when the spread has the error's size, below 1 when overconfident).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srgan.engine.checkpoint import load_model
from srgan.model_source import resolve_model
from srgan.models.blocks import NoiseInjection
from srgan.tta import D4_SIZE, D4Pass, check_tta, d4_mean

# Nominal central-interval levels of the reliability curve.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6827, 0.8, 0.9, 0.95, 0.99)


def z_for(level: float) -> float:
    """Half-width, in standard deviations, of the central ``level`` interval of a Gaussian."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1), got {level}")
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))


class SampleSpread(nn.Module):
    """Runs every member (or one stochastic member with several noise seeds) on the input; returns
    ``cat([mean, std], dim=1)`` over the samples (sample standard deviation, ``n - 1``).

    ``method`` names it in tags and reports (default: ``noise`` with seeds, else ``ensemble``);
    with ``d4`` every sample is its member's D4 self-ensemble (:func:`srgan.tta.d4_mean`)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        noise_seeds: Sequence[int] | None = None,
        *,
        method: str | None = None,
        d4: bool = False,
    ) -> None:
        super().__init__()
        if noise_seeds is not None:
            if len(members) != 1:
                raise ValueError("noise sampling takes one stochastic generator")
            if len(noise_seeds) < 2:
                raise ValueError(f"uncertainty.samples must be >= 2, got {len(noise_seeds)}")
        elif len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.noise_seeds = list(noise_seeds) if noise_seeds is not None else None
        self.method = method or ("noise" if noise_seeds is not None else "ensemble")
        self.d4 = d4

    def with_tta(self, tta: str) -> SampleSpread:
        """This sampler under ``tta`` (:mod:`srgan.tta`): itself for ``none`` and for a ``tta``
        sampler (already the D4 mean: ``tta=d4`` with ``uncertainty=tta`` is the same thing), else
        a sampler whose every sample is its member's D4 self-ensemble."""
        if check_tta(tta) == "none" or self.method == "tta" or self.d4:
            return self
        return SampleSpread(list(self.members), self.noise_seeds, method=self.method, d4=True)

    @property
    def samples(self) -> int:
        return len(self.noise_seeds) if self.noise_seeds is not None else len(self.members)

    def _draws(self):
        if self.noise_seeds is None:
            yield from self.members
            return
        member = self.members[0]
        for seed in self.noise_seeds:
            member.set_noise("fixed", seed)
            yield member

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = m2 = None
        for n, member in enumerate(self._draws(), start=1):
            y = d4_mean(member, x) if self.d4 else member(x).float()
            if mean is None:
                mean, m2 = y.clone(), torch.zeros_like(y)
                continue
            delta = y - mean
            mean += delta / n
            m2 += delta * (y - mean)
        std = (m2 / (self.samples - 1)).clamp_min(0).sqrt()
        return torch.cat([mean, std], 1)


def noise_sampler(generator: nn.Module, samples: int, seed: int = 0) -> SampleSpread:
    """``samples`` draws of a generator with noise injection; a clear error for one without."""
    if not any(isinstance(m, NoiseInjection) for m in generator.modules()) or not hasattr(generator, "set_noise"):
        raise ValueError(
            f"uncertainty=noise needs a generator with noise injection (train with generator=stochastic); "
            f"this model's generator is {type(generator).__name__}. Use uncertainty=ensemble with other models instead."
        )
    strength = max(float(m.strength.detach().abs().max()) for m in generator.modules() if isinstance(m, NoiseInjection))
    if strength == 0:
        raise ValueError(
            "uncertainty=noise: every noise strength of this stochastic generator is 0 (it was not trained, or "
            "training switched the noise off), so all samples would be identical"
        )
    return SampleSpread([generator], [seed + k for k in range(samples)])


def ensemble_sampler(model: Any, members: Sequence[Any]) -> SampleSpread:
    """The model and the other loaded models (``ExportedModel``), which must match it in scale,
    bands and normalisation (each mismatch is named with the member's folder)."""
    for other in members:
        for what, a, b in (
            ("scale", model.scale, other.scale),
            ("bands", list(model.band_names), list(other.band_names)),
            ("normalisation", model.normalization.to_config(), other.normalization.to_config()),
        ):
            if a != b:
                raise ValueError(f"ensemble member {other.directory}: {what} {b} differs from the model's {a}")
    return SampleSpread([model.generator, *(m.generator for m in members)])


def tta_sampler(generator: nn.Module) -> SampleSpread:
    """The eight D4 views of one generator (:class:`srgan.tta.D4Pass`), as samples."""
    return SampleSpread([D4Pass(generator, i) for i in range(D4_SIZE)], method="tta")


@dataclass
class NoSpread:
    """``uncertainty=none``: a single pass, no spread. The two keys every option has:
    ``std_scale`` (``srgan-infer`` multiplies the written spread by it) and ``calibrate_on`` (the split
    ``srgan-eval`` fits that factor on; None: the raw spread only)."""

    std_scale: float
    calibrate_on: str | None

    def sampler(self, model: Any, load: Callable[[str], Any]) -> SampleSpread | None:
        return None


@dataclass
class NoiseSpread(NoSpread):
    """``uncertainty=noise``: ``samples`` draws of the model's stochastic generator, draw k with the
    noise of seed ``seed + k``."""

    samples: int
    seed: int
    members: list[str]

    def sampler(self, model: Any, load: Callable[[str], Any]) -> SampleSpread:
        if self.members:
            raise ValueError(
                "uncertainty.members is for uncertainty=ensemble; uncertainty=noise samples the model itself"
            )
        return noise_sampler(model.generator, self.samples or 0, self.seed)


@dataclass
class EnsembleSpread(NoSpread):
    """``uncertainty=ensemble``: the model and the ``members`` (resolved and loaded by ``load``)."""

    members: list[str]

    def sampler(self, model: Any, load: Callable[[str], Any]) -> SampleSpread:
        if not self.members:
            raise ValueError("uncertainty=ensemble needs uncertainty.members=[<model folder or runs:/ URI>, ...]")
        return ensemble_sampler(model, [load(m) for m in self.members])


@dataclass
class TTASpread(NoSpread):
    """``uncertainty=tta``: the model's eight D4 views (flips and quarter turns, back-transformed):
    mean and spread of its geometric self-ensemble, for any generator (8 passes)."""

    def sampler(self, model: Any, load: Callable[[str], Any]) -> SampleSpread:
        return tta_sampler(model.generator)


def load_sampler(model: Any, node: Any, tracking_uri: str | None) -> SampleSpread | None:
    """The sampler an ``uncertainty`` config node asks for (None for uncertainty=none); members are
    model folders, run folders or MLflow URIs, resolved like ``model``. The node names one of
    srgan's four options with plain values (:func:`srgan.config.build_option`)."""
    from srgan.config import build_option

    option = build_option(node, (NoSpread, NoiseSpread, EnsembleSpread, TTASpread), "uncertainty")
    return option.sampler(model, lambda member: load_model(resolve_model(member, tracking_uri)))


def interval_scale(
    abs_error: torch.Tensor, std: torch.Tensor, level: float = 0.6827, max_points: int = 2_000_000
) -> float:
    """The factor f that puts a share ``level`` of the values inside mean +- f z(level) std: the
    ``level`` quantile of |error| / (z std) (pixels without spread or without a finite ratio left out;
    at most ``max_points`` of them, drawn with a fixed seed)."""
    ratio = (abs_error.double() / (z_for(level) * std.double())).flatten()
    ratio = ratio[torch.isfinite(ratio)]
    if ratio.numel() == 0:
        raise ValueError("no pixel has a finite error / spread ratio: no scale factor can be fitted")
    if ratio.numel() > max_points:
        ratio = ratio[torch.randperm(ratio.numel(), generator=torch.Generator().manual_seed(0))[:max_points]]
    return float(torch.quantile(ratio, level))


class Calibration:
    """Accumulates predicted mean / std against the truth over any number of areas (all in the same
    units, shape ``(bands, H, W)``); :meth:`compute` gives the coverage, correlation and spread ratio."""

    def __init__(self, levels: Sequence[float] = LEVELS) -> None:
        self.levels = list(levels)
        self.z = torch.tensor([z_for(p) for p in self.levels], dtype=torch.float64)
        self.hits = torch.zeros(len(self.levels), dtype=torch.float64)
        # n, sum std, sum |err|, sum std*|err|, sum std^2, sum err^2
        self.moments = torch.zeros(6, dtype=torch.float64)

    def update(self, mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> None:
        if not (mean.shape == std.shape == target.shape):
            raise ValueError(f"mean, std and target shapes differ: {mean.shape}, {std.shape}, {target.shape}")
        err = (target.double() - mean.double()).abs().flatten()
        s = std.double().flatten()
        ok = torch.isfinite(err) & torch.isfinite(s)
        err, s = err[ok], s[ok]
        self.hits += (err[None] <= self.z[:, None] * s[None]).sum(1).double()
        self.moments += torch.stack(
            [
                torch.tensor(float(err.numel()), dtype=torch.float64),
                s.sum(),
                err.sum(),
                (s * err).sum(),
                (s * s).sum(),
                (err * err).sum(),
            ]
        )

    def reliability(self) -> list[tuple[float, float]]:
        """(nominal, observed) coverage of the central intervals."""
        n = float(self.moments[0])
        return [(p, float(h) / n if n else math.nan) for p, h in zip(self.levels, self.hits)]

    def compute(self) -> dict[str, float]:
        n, ss, se, sse, s2, e2 = (float(v) for v in self.moments)
        if n == 0:
            raise ValueError("no finite values were given to the calibration")
        curve = dict(self.reliability())
        cov = sse / n - (ss / n) * (se / n)
        var_s, var_e = s2 / n - (ss / n) ** 2, (e2 / n) - (se / n) ** 2
        corr = cov / math.sqrt(var_s * var_e) if var_s > 0 and var_e > 0 else math.nan
        rmse = math.sqrt(e2 / n)
        return {
            "coverage_68": self._at(curve, 0.6827),
            "coverage_95": self._at(curve, 0.95),
            "spread_error_corr": corr,
            "mean_std": ss / n,
            "rmse": rmse,
            "spread_rmse_ratio": math.sqrt(s2 / n) / rmse if rmse > 0 else math.nan,
            # Mean absolute gap between observed and nominal coverage over the curve (0: calibrated).
            "calibration_error": sum(abs(o - p) for p, o in curve.items()) / len(curve),
        }

    @staticmethod
    def _at(curve: dict[float, float], level: float) -> float:
        if level not in curve:
            raise KeyError(f"level {level} is not on the reliability curve {sorted(curve)}")
        return curve[level]


def reliability_plot(curves: dict[str, list[tuple[float, float]]], path: Path, title: str = "") -> Path:
    """Observed against nominal coverage of the central intervals, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, curve in curves.items():
        ax.plot([p for p, _ in curve], [o for _, o in curve], marker="o", markersize=3, label=name)
    ax.set_xlabel("nominal coverage of mean +- z std")
    ax.set_ylabel("share of HR values inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

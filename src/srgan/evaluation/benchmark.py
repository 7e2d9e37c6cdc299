"""The opensr-test benchmark itself, run by ``srgan-eval benchmark=opensr_test``.

The measures are the ``opensr-test`` package's (Aybar et al., IEEE GRSL 21, 2024; PyPI
``opensr-test``, pinned to :data:`PINNED` by srgan's ``benchmark`` extra): each evaluated image (one
region of the split: an opensr-test ROI, a paired-folder region, a raster's held-out area) goes
through ``opensr_test.Metrics(config).compute(lr=, sr=, hr=)`` as ``(bands, H, W)`` float tensors in
physical units (reflectance), and the report gives, per method, the mean +- standard deviation over
the images, as opensr-test's README tables do. ``config`` holds overrides of ``opensr_test.Config``;
empty, every setting is that version's own default (recorded in ``eval.json``), except that the
RGB bands opensr-test uses for its spatial measure are the dataset's RGB bands.

opensr-test has no nodata mask, so an image with a pixel without data is left out (and counted).
It reseeds Python's, NumPy's and torch's global generators and sets cuDNN flags on every call;
here each call runs with those saved and restored, so the rest of the evaluation is unaffected.
srgan's own fidelity measures (:mod:`.fidelity`) stay beside these, under their own names.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from typing import Any

import numpy as np
import torch

PINNED = "1.3.3"
# srgan-eval's methods, each measured on every image unless ``methods`` names a subset.
METHODS = ("sr", "bicubic", "nearest")
# What Metrics.compute returns, in its order, and which way is better (opensr-test's README).
MEASURES = ("reflectance", "spectral", "spatial", "synthesis", "ha_metric", "om_metric", "im_metric")
HIGHER_IS_BETTER = {"synthesis", "im_metric"}


class NoBenchmark:
    """``benchmark=none``: srgan's own measures only."""

    def build(self, rgb: list[int]) -> None:
        return None


class OpenSRTest:
    """``benchmark=opensr_test``: the options of a run of the package (built by :meth:`build`)."""

    def __init__(
        self, config: dict[str, Any] | None = None, gradient_threshold: float | str = "auto", methods=None
    ) -> None:
        self.config = dict(config or {})
        self.gradient_threshold = gradient_threshold
        self.methods = list(methods) if methods is not None else None

    def build(self, rgb: list[int]) -> OpenSRTestRun:
        return OpenSRTestRun(self.config, self.gradient_threshold, rgb, self.methods)


def _package():
    try:
        import opensr_test
    except ImportError as err:
        raise ImportError(
            "benchmark=opensr_test needs the opensr-test package: pip install 'srgan[benchmark]' "
            f"(opensr-test=={PINNED})"
        ) from err
    return opensr_test


@contextlib.contextmanager
def _global_state_kept():
    """Python's, NumPy's and torch's generators and the cuDNN flags as they were before the block."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


class OpenSRTestRun:
    """Per-image opensr-test measures of each method, and their mean +- std over the images."""

    def __init__(
        self, config: dict[str, Any], gradient_threshold: float | str, rgb: list[int], methods: list[str] | None
    ) -> None:
        package = _package()
        self.version = package.__version__
        known = set(package.Config.model_fields)
        unknown = sorted(set(config) - known)
        if unknown:  # opensr_test.Config ignores unknown keys: a typo would silently measure the default
            raise ValueError(f"benchmark.config: unknown opensr_test.Config key(s) {unknown}; known: {sorted(known)}")
        settings = dict(config)
        if "rgb_bands" not in settings and len(rgb) == 3:
            settings["rgb_bands"] = list(rgb)
        try:
            self.config = package.Config(**settings)
        except Exception as err:  # pydantic's ValidationError names the field
            raise ValueError(f"benchmark.config: {err}") from err
        _check_threshold(gradient_threshold)
        self.gradient_threshold = gradient_threshold
        if methods is not None:
            if not isinstance(methods, list) or not methods or not set(methods) <= set(METHODS):
                raise ValueError(f"benchmark.methods={methods!r}: null or a non-empty list of {list(METHODS)}")
        self.methods = methods
        self.images: dict[str, list[dict[str, Any]]] = {}
        self.left_out: list[str] = []
        self._metrics = package.Metrics

    def wants(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def left_out_image(self, name: str) -> None:
        """An image that has pixels without data (opensr-test has no mask for them)."""
        if name not in self.left_out:
            self.left_out.append(name)

    def update(self, method: str, lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, name: str) -> dict[str, float]:
        """opensr-test's measures of one image (``(bands, H, W)``, physical units) for ``method``."""
        if sr.shape[-2:] != hr.shape[-2:]:
            raise ValueError(f"{name}: SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in size")
        with _global_state_kept(), torch.no_grad():
            try:
                values = self._metrics(self.config).compute(
                    lr=lr.float().cpu(),
                    sr=sr.float().cpu(),
                    hr=hr.float().cpu(),
                    gradient_threshold=self.gradient_threshold,
                )
            except Exception as err:  # a setting the package checks only while measuring (rgb_bands, ...)
                raise ValueError(
                    f"opensr-test failed on {name} ({type(err).__name__}: {err}); check benchmark.config"
                ) from err
        row = {"image": name, **{k: float(values[k]) for k in MEASURES}}
        self.images.setdefault(method, []).append(row)
        return row

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per method and measure: mean and standard deviation (``ddof=1``, pandas' default) over the
        images where the measure is finite (opensr-test gives NaN for an alignment it could not
        trust), and how many those are."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for method, rows in self.images.items():
            out[method] = {}
            for key in MEASURES:
                values = np.array([r[key] for r in rows], dtype=np.float64)
                finite = values[np.isfinite(values)]
                out[method][key] = {
                    "mean": float(finite.mean()) if finite.size else math.nan,
                    "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                    "images": int(finite.size),
                }
        return out

    def record(self) -> dict[str, Any]:
        """What ``eval.json`` keeps: version, settings, the summary and every image's values."""
        settings = self.config.model_dump()
        settings["device"] = str(settings["device"])
        return {
            "package": "opensr-test",
            "version": self.version,
            "pinned": PINNED,
            "config": settings,
            "gradient_threshold": self.gradient_threshold,
            "images": len(next(iter(self.images.values()), [])),
            "left_out_with_nodata": list(self.left_out),
            "summary": self.summary(),
            "per_image": self.images,
        }

    def table(self) -> str:
        """The table opensr-test's README shows: a row per method, mean +- std per measure."""
        summary = self.summary()
        arrows = {k: ("↑" if k in HIGHER_IS_BETTER else "↓") for k in MEASURES}
        head = f"{'method':<10}" + "".join(f"{k + ' ' + arrows[k]:>20}" for k in MEASURES)
        lines = [head, "-" * len(head)]
        for method, values in summary.items():
            cells = "".join(f"{_cell(values[k]):>20}" for k in MEASURES)
            lines.append(f"{method:<10}{cells}")
        images = len(next(iter(self.images.values()), []))
        note = f"opensr-test {self.version}, mean ± std over {images} image(s)"
        if self.version != PINNED:
            note += f" (srgan pins {PINNED}; published tables name their version)"
        if self.left_out:
            note += f"; {len(self.left_out)} image(s) with nodata left out"
        return note + "\n" + "\n".join(lines)


def _check_threshold(value: Any) -> None:
    """Metrics.compute's ``gradient_threshold``: a finite number >= 0, ``auto`` or ``auto<1..99>``."""
    if isinstance(value, bool) or not (
        (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0)
        or (isinstance(value, str) and re.fullmatch(r"auto([1-9][0-9]?)?", value))
    ):
        raise ValueError(
            f"benchmark.gradient_threshold={value!r}: a number >= 0, or auto / auto<percentile 1-99> (auto75)"
        )


def _cell(value: dict[str, float]) -> str:
    if not math.isfinite(value["mean"]):
        return "nan"
    if not math.isfinite(value["std"]):
        return f"{value['mean']:.4f}"
    return f"{value['mean']:.4f} ± {value['std']:.4f}"


def load_benchmark(node: Any, rgb: list[int]) -> OpenSRTestRun | None:
    """The benchmark a ``benchmark`` config node asks for (None for benchmark=none): one of srgan's
    two options with plain values (:func:`srgan.config.build_option`)."""
    from srgan.config import build_option

    return build_option(node, (NoBenchmark, OpenSRTest), "benchmark").build(rgb)

"""How close are the synthetic B-mode images to real ones? Image statistics measured the same way on both.

Per image (:func:`image_stats`):

* speckle grain away from the lesion, axial and lateral (:func:`zoomdx_lib.eval.readability.speckle_grain`:
  full width at half maximum of the grey-level autocorrelation, as a fraction of the image width), with the
  grey mean and spread of the same patches;
* lesion / background contrast in dB, ``20 log10(lesion mean / background mean)``: the lesion is the ellipse
  inscribed in the central 80 % of its box (so that the margin does not count), the background a band around
  the box (``ring`` × the box's sides) inside the scanned region;
* lesion size (square root of the box area over the image width) and aspect (box height / width: depth over
  width, as a sonographer's "taller than wide").

Each image carries a ``group``: the true echo class for synthetic cases, the pathology for BUS-BRA (which has
no echo label). :func:`realism_table` gives the median of every statistic per source with a 95 % bootstrap
interval, and the contrast per group.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..config import DATA_ENV
from ..data.sources import DataSpec, load_cases
from ..data.synth import generate_samples
from . import metrics as M
from .readability import speckle_grain, visible_region

STATS = ("grey_mean", "grey_std", "axial_rel", "lateral_rel", "contrast_db", "size_rel", "aspect")
LESION_SHRINK = 0.8   # the ellipse that counts as lesion: this share of the box's sides, centred


def lesion_contrast(gray: np.ndarray, box: Sequence[float], valid: Optional[np.ndarray] = None,
                    ring: float = 0.5) -> Optional[dict]:
    """{lesion_mean, background_mean, contrast_db} of one grey image, or None when either region is empty.

    >>> g = np.full((100, 100), 100.0); g[40:60, 40:60] = 10.0
    >>> r = lesion_contrast(g, (40, 40, 60, 60))
    >>> r["lesion_mean"], r["background_mean"], round(r["contrast_db"], 1)
    (10.0, 100.0, -20.0)
    """
    h, w = gray.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5          # pixel centres, pixel-edge box convention
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    inside = (((xx - cx) / (LESION_SHRINK * bw / 2)) ** 2 + ((yy - cy) / (LESION_SHRINK * bh / 2)) ** 2) <= 1
    in_box = (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
    around = ((xx >= x1 - ring * bw) & (xx < x2 + ring * bw) & (yy >= y1 - ring * bh) & (yy < y2 + ring * bh)
              & ~in_box)
    if valid is not None:   # the band only: an anechoic lesion is black inside the scanned region too
        around = around & valid
    if not inside.any() or not around.any():
        return None
    lesion, background = float(gray[inside].mean()), float(gray[around].mean())
    return dict(lesion_mean=lesion, background_mean=background,
                contrast_db=float(20 * np.log10(max(lesion, 1.0) / max(background, 1.0))))


def image_stats(sample, image, group: Optional[str] = None, seed: int = 0, fan_masked: bool = True) -> dict:
    """Every statistic of one (sample, image) pair (NaN where one cannot be measured), with its `group`.
    `fan_masked` restricts patches and regions to the scanned region (black outside the fan)."""
    gray = np.asarray(image.convert("L")).astype(np.float64)
    valid = visible_region(gray.astype(np.uint8)) if fan_masked else None
    x1, y1, x2, y2 = sample.box
    w = gray.shape[1]
    row = dict(id=sample.id, group=group, size_rel=float(np.sqrt(max(x2 - x1, 0) * max(y2 - y1, 0)) / w),
               aspect=float((y2 - y1) / max(x2 - x1, 1e-9)))
    grain = speckle_grain(gray, sample.box, valid, seed=seed) or {}
    contrast = lesion_contrast(gray, sample.box, valid) or {}
    for k in ("grey_mean", "grey_std", "axial_rel", "lateral_rel"):
        row[k] = float(grain.get(k, np.nan))
    row["contrast_db"] = float(contrast.get("contrast_db", np.nan))
    return row


def synthetic_group(sample) -> Optional[str]:
    """The true echo class of a synthetic case (its generator's ground truth)."""
    return (sample.meta or {}).get("true_attributes", {}).get("echo")


def real_group(sample) -> Optional[str]:
    """The pathology of a real case when its importer recorded one (BUS-BRA), else its label."""
    return (sample.meta or {}).get("pathology") or sample.label


def source_stats(items: Sequence[tuple], group_fn, seed: int = 0, fan_masked: bool = True) -> pd.DataFrame:
    """One row of :func:`image_stats` per (sample, image) pair, grouped by ``group_fn(sample)``."""
    return pd.DataFrame([image_stats(s, img, group_fn(s), seed, fan_masked) for s, img in items])


def median_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median of the finite values with a 95 % bootstrap interval (NaNs when none)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return (float("nan"),) * 3
    ci = M.bootstrap(lambda i: {"m": float(np.median(v if i is None else v[i]))}, len(v), n_boot, seed=seed)
    return tuple(float(x) for x in ci["m"])


def realism_table(frames: dict, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Rows (source, statistic, group, n, median, low, high) for {source name: :func:`source_stats` frame}:
    every statistic over all images (group "all"), and the contrast per group."""
    rows = []
    for source, df in frames.items():
        parts = [("all", df, STATS)] + [(g, part, ("contrast_db",)) for g, part in df.groupby("group", dropna=True)]
        for group, part, stats in parts:
            for stat in stats:
                m, lo, hi = median_ci(part[stat].to_numpy(), n_boot, seed)
                rows.append(dict(source=source, statistic=stat, group=group,
                                 n=int(np.isfinite(part[stat].to_numpy(float)).sum()), median=m, low=lo, high=hi))
    return pd.DataFrame(rows)


def realism_wide(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: one row per statistic (and group), one 'median [low, high]' column per source."""
    cell = table.assign(cell=[f"{m:.3g} [{lo:.3g}, {hi:.3g}] (n={n})" for m, lo, hi, n in
                              zip(table["median"], table["low"], table["high"], table["n"])])
    return cell.pivot_table(index=["statistic", "group"], columns="source", values="cell", aggfunc="first",
                            sort=False)


def realism_comparison(reference: Optional[str], folds: Optional[Sequence[int]], n: int, organ: str = "breast",
                       size: int = 256, seed: int = 0, n_boot: int = 1000,
                       styles: Sequence[str] = ("default",)) -> dict:
    """`n` fresh synthetic `organ` cases per imaging style (:data:`zoomdx_lib.data.synth.STYLES`; the same
    cases in each) against the first `n` cases of `folds` of a real data SPEC (``bus_bra:PATH``; train
    folds only, never a test fold): {"examples": {source: items}, "table": :func:`realism_table`,
    "skipped": reason or None}. A reference that is not on disk is skipped with the reason (only the
    synthetic sources are measured) unless ``$ZOOMDX_DATA`` is set, which promises the data."""
    examples = {f"synthetic {organ}" + ("" if style == "default" else f" ({style} style)"):
                list(generate_samples(organ, n, seed=10_000 + seed, size=size, split="realism", style=style))
                for style in styles}
    skipped = None
    if reference:
        spec = DataSpec.parse(reference)
        if spec.path.exists():
            name = spec.text.split(":", 1)[0].replace("_", "-").upper() + (f" folds {','.join(map(str, folds))}" if folds else "")
            examples[name] = load_cases(spec, n=n, folds=folds)[0]
        elif os.environ.get(DATA_ENV):
            raise FileNotFoundError(f"realism reference {reference!r}: {spec.path} does not exist (${DATA_ENV} is set)")
        else:
            skipped = f"{reference!r} not found at {spec.path}: only the synthetic images are measured"
    frames = {name: source_stats(items, synthetic_group if name.startswith("synthetic") else real_group, seed)
              for name, items in examples.items()}
    return dict(examples=examples, table=realism_table(frames, n_boot, seed), skipped=skipped)

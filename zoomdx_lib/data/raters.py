"""Two simulated sonographers: class boundaries of the latent attribute values, and noisy readings of them.

Each attribute of a synthetic lesion has a continuous latent value (echo: lesion/tissue contrast in
dB; shape: aspect ratio and radial irregularity; margin: blur/spiculation 0-1). Its class follows
from fixed boundaries. A rater reads the latent value plus a fixed personal bias plus Gaussian
noise (larger on noisy images) and classifies with the same boundaries, so the two raters disagree
near a boundary: c = 0 marks the genuinely ambiguous cases, as with real sonographers.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from ..schema import Sample, check_attribute

# Class boundaries of the latent values and the interval each class is drawn from.
ECHO_DB = {"Anechoic": (-40.0, -24.0), "Hypoechoic": (-24.0, -6.0), "Isoechoic": (-6.0, 5.0), "Hyperechoic": (5.0, 16.0)}
T_ROUND, T_IRREG, T_MARGIN = 1.3, 0.10, 0.4      # aspect ratio; RMS radial deviation; blur/spiculation 0-1
ASPECT_MAX, IRREG_MAX = 2.0, 0.24
# Rater model per attribute: latent keys, noise sd and the two raters' fixed biases (latent units).
RATERS = {
    "echo": dict(keys=("echo_db",), sd=(3.6,), bias=((1.0,), (-1.0,))),
    "shape": dict(keys=("shape_aspect", "shape_irregularity"), sd=(0.1, 0.032), bias=((0.02, 0.006), (-0.02, -0.006))),
    "margin": dict(keys=("margin_blur",), sd=(0.19,), bias=((0.03,), (-0.03,))),
}
EASY_DISTANCE = 2.5   # a case is easy (difficulty 0) once it is this many rater sds from every boundary


def classify(attribute: str, v: dict) -> str:
    """Class of `attribute` for latent values `v` (keys of RATERS[attribute]['keys'])."""
    if attribute == "echo":
        db = v["echo_db"]
        return next((k for k, (lo, hi) in ECHO_DB.items() if db < hi), "Hyperechoic")
    if attribute == "shape":
        if v["shape_irregularity"] >= T_IRREG:
            return "Irregular"
        return "Round" if v["shape_aspect"] < T_ROUND else "Oval"
    return "Not circumscribed" if v["margin_blur"] >= T_MARGIN else "Circumscribed"


def closeness(attribute: str, v: dict) -> float:
    """1 on a class boundary, falling linearly to 0 at EASY_DISTANCE rater sds from the nearest one."""
    sd = RATERS[attribute]["sd"]
    if attribute == "echo":
        d = min(abs(v["echo_db"] - b) for b in (-24.0, -6.0, 5.0)) / sd[0]
    elif attribute == "shape":
        d_irr = abs(v["shape_irregularity"] - T_IRREG) / sd[1]
        d = d_irr if v["shape_irregularity"] >= T_IRREG else min(d_irr, abs(v["shape_aspect"] - T_ROUND) / sd[0])
    else:
        d = abs(v["margin_blur"] - T_MARGIN) / sd[0]
    return float(max(0.0, 1.0 - d / EASY_DISTANCE))


def simulate_raters(case, attribute: str, seed: Union[int, np.random.Generator]) -> tuple[str, str]:
    """Labels of sonographers A and B for `attribute` of `case` (a SynthCase; only its latent values are read).

    Each rater reads the latent value(s) plus a fixed bias (A and B differ) plus Gaussian noise
    (sd grows by up to 50 % with image noise) and classifies with the generator's boundaries.
    """
    check_attribute(attribute)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    spec = RATERS[attribute]
    scale = 1.0 + 0.5 * case.latent.get("noise", 0.0)
    out = []
    for bias in spec["bias"]:
        v = {key: case.latent[key] + b + sd * scale * rng.standard_normal()
             for key, sd, b in zip(spec["keys"], spec["sd"], bias)}
        out.append(classify(attribute, v))
    return out[0], out[1]


def disagreement_curve(samples: list[Sample], bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres of difficulty 0-1, P(c=0) per bin (nan where empty), count per bin)."""
    d = np.array([s.difficulty for s in samples if s.difficulty is not None], float)
    c = np.array([s.c for s in samples if s.difficulty is not None], float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(d, edges) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    zero = np.bincount(idx, weights=1 - c, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (edges[:-1] + edges[1:]) / 2, np.where(count > 0, zero / np.maximum(count, 1), np.nan), count

"""The tissue around a synthetic lesion (:mod:`zoomdx_lib.data.synth`): organ layers and vessels.

Maps on the RF grid of :func:`.bmode.scan_geometry` (depth samples x scan lines, float32): the
backscatter amplitude B (tissue = 1) and the attenuation multiplier alpha (tissue = 1); vessels are
anechoic tubes composited into both. Pixel quantities are output-image pixels; "of S" = a
fraction of the output size S.
"""
from __future__ import annotations

import math

import numpy as np

from .bmode import rf_window

# vessels (liver) and the carotid artery (thyroid): anechoic tubes
VESSEL_POSITION = (0.1, 0.9)         # start point, of S in x and y
VESSEL_RADIUS = (0.015, 0.04)        # of S
VESSEL_LENGTH = (0.0, 0.4)           # of S; 0 = a vessel seen in cross-section
VESSEL_CLEARANCE = 0.03              # of S, between a vessel and the lesion bound
VESSEL_WALLS = (0.0, 1.5)            # wall brightness, one of (backscatter units, tissue = 1)
CAROTID_X = (0.1, 0.9)               # of S: on the side away from the lesion
CAROTID_DEPTH = (0.4, 0.6)           # of S
CAROTID_RADIUS = (0.07, 0.1)         # of S
CAROTID_CLEARANCE = 4.0              # pixels between the artery and the lesion bound
CAROTID_WALL = 1.5


def wavy(rng, lat, amp) -> np.ndarray:
    """Smooth random float32 profile over the coordinate array `lat` (0-1): three sines of 0.5-3
    cycles, amplitude ~amp (units of the caller); draws from the numpy Generator `rng`."""
    k = rng.uniform(0.5, 3.0, 3)
    return (amp * np.sin(2 * np.pi * (k[:, None] * lat + rng.random((3, 1))))).sum(0).astype(np.float32) / 1.7


def layers(organ: str, g: dict, rng, S: int):
    """The organ's background on the RF grid `g` (S: output size, pixels): (backscatter amplitude B,
    tissue = 1, with skin, fat, muscle or strap layers and bright interfaces; attenuation multiplier
    alpha, all 1), both float32 n_ax x n_lat."""
    d, lat = g["depth"][::2, None], g["lat"]          # layers are smooth: every 2nd RF row, then repeated
    line = lambda z, w=0.004: np.exp(-((d - z) / w) ** 2)
    if organ == "breast":
        z1 = 0.12 + 0.1 * rng.random() + wavy(rng, lat, 0.04)
        z2 = 0.62 + 0.12 * rng.random() + wavy(rng, lat, 0.05)
        z3 = z2 + 0.06 + wavy(rng, lat, 0.02)
        band = 1 + 0.45 * np.sin(2 * np.pi * (d * rng.uniform(9, 14) + wavy(rng, lat, 0.35)))
        cooper = 1 + np.float32(2.5) * (np.sin(2 * np.pi * (d * 7 + 1.5 * wavy(rng, lat, 0.8))) > 0.93)
        muscle = 0.55 * (1 + 0.6 * np.sin(2 * np.pi * (d * 38 + wavy(rng, lat, 0.5))))
        B = np.where(d < z1, 0.4 * cooper, np.where(d < z2, band, np.where(d < z3, 0.4, muscle)))
        B = B + 3.0 * line(0.012, 0.006)
    elif organ == "thyroid":
        z1, z2 = 0.14 + 0.06 * rng.random() + wavy(rng, lat, 0.02), 0.82 + 0.08 * rng.random() + wavy(rng, lat, 0.03)
        strap = 0.4 * (1 + 0.5 * np.sin(2 * np.pi * (d * 45 + wavy(rng, lat, 0.3))))
        B = np.where(d < z1, strap, np.where(d < z2, 1.0, 0.35)) + 2.5 * line(0.01, 0.005) + 1.2 * line(z1, 0.006)
    else:
        z1 = 0.05 + 0.03 * rng.random() + wavy(rng, lat, 0.01)
        z2 = z1 + 0.04 + 0.03 * rng.random()
        muscle = 0.5 * (1 + 0.5 * np.sin(2 * np.pi * d * 70))
        B = np.where(d < z1, 0.35, np.where(d < z2, muscle, 1.0)) + 2.0 * line(z1, 0.005) + 2.5 * line(z2, 0.005)
    return np.repeat(B.astype(np.float32), 2, axis=0), np.ones((g["n_ax"], g["n_lat"]), np.float32)


def _tube(g, p, ang, length, r, alpha, B, wall):
    """Composite an anechoic vessel: segment from p (pixels) at angle ang, given length and radius r."""
    ux, uy = math.cos(ang), math.sin(ang)
    win = rf_window(g, p[0] + ux * length / 2, p[1] + uy * length / 2, length / 2 + r + 3)
    X, Y = g["X"][win] - p[0], g["Y"][win] - p[1]
    t = np.clip(X * ux + Y * uy, 0, length)
    dist = np.hypot(X - t * ux, Y - t * uy)
    w = np.clip(r - dist + 0.5, 0, 1)
    B[win] *= 1 - 0.97 * w
    if wall:
        B[win] += wall * np.exp(-((dist - r) / 1.2) ** 2)
    alpha[win] -= 0.8 * w
    return win[1]


def _seg_dist(q, p, ang, length) -> float:
    """Distance in pixels from point q to the segment of _tube."""
    u = np.array([math.cos(ang), math.sin(ang)])
    t = np.clip((np.asarray(q) - p) @ u, 0, length)
    return float(np.hypot(*(np.asarray(q) - p - t * u)))


def add_vessels(rng, organ: str, vessels: tuple[int, int], g: dict, L: dict, R: float, S: int, B, alpha) -> list[slice]:
    """Composite `vessels` = (min, max) vessels (and a thyroid's carotid artery) clear of the lesion
    (centre L["cx"], L["cy"] and bound R, pixels) into B and alpha in place; returns the RF line
    slices they touch."""
    touched = []
    n_lo, n_hi = vessels
    for _ in range(int(rng.integers(n_lo, n_hi + 1))):
        pt = rng.uniform(VESSEL_POSITION[0] * S, VESSEL_POSITION[1] * S, 2).tolist()
        ang, rv = rng.uniform(0, 2 * np.pi), rng.uniform(*VESSEL_RADIUS) * S
        ln = rng.uniform(*VESSEL_LENGTH) * S
        if _seg_dist((L["cx"], L["cy"]), pt, ang, ln) > R + rv + VESSEL_CLEARANCE * S:
            touched.append(_tube(g, pt, ang, ln, rv, alpha, B, float(rng.choice(VESSEL_WALLS))))
    if organ == "thyroid":                                            # carotid artery on the far side
        side = CAROTID_X[0] * S if L["cx"] > S / 2 else CAROTID_X[1] * S
        cy, rc = rng.uniform(*CAROTID_DEPTH) * S, rng.uniform(*CAROTID_RADIUS) * S
        if np.hypot(L["cx"] - side, L["cy"] - cy) > R + rc + CAROTID_CLEARANCE:
            touched.append(_tube(g, (side, cy), 0.0, 0.0, rc, alpha, B, CAROTID_WALL))
    return touched

"""Synthetic B-mode ultrasound cases whose lesion attributes follow from known latent values.

Long because the physics is one pipeline whose steps share the RF grid; each step is a function.

Physics, in the order it runs (all on an RF grid: depth samples x scan lines, float32):
1. tissue backscatter amplitude map (organ layers, vessels, the lesion) and a per-sample
   attenuation map; the round-trip attenuation is the cumulative sum along each beam, so a
   cyst (low attenuation) brightens what lies behind it and a dense lesion shadows it;
   time-gain compensation undoes most, not all, of the background attenuation;
2. scatterers: Gaussian random amplitudes (dense scatterers give fully developed speckle),
   modulated by a coarser log-normal texture field, plus electronic noise (amplified by TGC);
3. point-spread function: Gaussian lateral beam (wider away from focus), then a
   Gaussian-windowed cosine pulse along depth applied in the Fourier domain *together with*
   the Hilbert transform and IQ decimation, so one FFT pair gives the envelope;
4. scan conversion to the output image (rectangle for linear probes, fan for convex ones)
   and log compression to 8 bit.
Each attribute has a continuous latent value (echo: lesion/tissue backscatter contrast in
dB; shape: aspect ratio and low-frequency radial irregularity; margin: edge blur/spiculation
0-1); its class follows from fixed boundaries, and two simulated sonographers read the latent
value through their own noise and bias (:mod:`zoomdx_lib.data.raters`). Determinism: only
numpy.random.default_rng(seed).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np
from PIL import Image
from scipy import fft as sfft

from ..schema import ATTRIBUTE_LABELS, ATTRIBUTES, Sample, check_attribute
from .raters import ASPECT_MAX, ECHO_DB, IRREG_MAX, T_IRREG, T_MARGIN, T_ROUND, closeness, simulate_raters

# Geometry in units of the output size S; PSF sds (axial pulse envelope, lateral beam at focus) and
# texture grain in output pixels at S=256 (scaled with S); attenuation = round trip over the full depth, dB.
ORGAN_PRESETS: dict[str, dict] = {
    "liver": dict(probe="convex", half_angle=0.5, top=0.03, apex_radius=0.22, axial=1.1, lateral=2.4, focus=0.5,
                  atten_db=32.0, texture=0.5, texture_px=4.0, dynamic_range=60.0, lesion_depth=(0.2, 0.95), vessels=(0, 3)),
    "breast": dict(probe="linear", axial=0.8, lateral=1.8, focus=0.45, atten_db=22.0, texture=0.3, texture_px=3.0,
                   dynamic_range=60.0, lesion_depth=(0.22, 0.8), vessels=(0, 0)),
    "thyroid": dict(probe="linear", axial=0.65, lateral=1.3, focus=0.5, atten_db=18.0, texture=0.1, texture_px=2.0,
                    dynamic_range=55.0, lesion_depth=(0.25, 0.8), vessels=(0, 0)),
}
@dataclass
class SynthCase:
    """One synthetic case. Pixel quantities are in output-image pixels (x right, y down).

    image: uint8 (size, size); box: tight lesion box (x1, y1, x2, y2), x2 = max_col + 1;
    mask: bool lesion mask; attributes: true class per attribute; latent: echo_db (dB),
    shape_aspect (>=1), shape_irregularity (RMS radial deviation, fraction of radius),
    margin_blur (0-1), noise (0-1), atten_ratio (lesion/tissue attenuation);
    difficulty: per attribute in [0, 1]; fov: bool visible region (the fan for convex probes).
    """

    image: np.ndarray
    box: tuple[float, float, float, float]
    mask: np.ndarray
    organ: str
    attributes: dict[str, str]
    latent: dict[str, float]
    difficulty: dict[str, float]
    seed: int
    fov: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def _check_organ(organ: str) -> dict:
    if organ not in ORGAN_PRESETS:
        raise ValueError(f"unknown organ {organ!r}; expected one of {sorted(ORGAN_PRESETS)}")
    return ORGAN_PRESETS[organ]


@lru_cache(maxsize=64)
def _interp(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation n_in -> n_out samples: left neighbour index and its right weight."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(pos.astype(int), n_in - 2)
    return i0, (pos - i0).astype(np.float32)[:, None]


def _smooth_field(rng, shape, cells) -> np.ndarray:
    """Zero-mean random field of roughly unit sd varying over `cells` = (axial, lateral) RF samples."""
    lo = rng.standard_normal(tuple(max(2, int(n / c) + 2) for n, c in zip(shape, cells)), dtype=np.float32)
    j, wj = _interp(shape[1], lo.shape[1])
    lo = (lo[:, j] * (1 - wj.T) + lo[:, j + 1] * wj.T)
    i, wi = _interp(shape[0], lo.shape[0])
    return (lo[i] * (1 - wi) + lo[i + 1] * wi) * np.float32(1.6)


@lru_cache(maxsize=16)
def _geometry(organ: str, S: int, k: float) -> dict:
    """RF grid, PSF transfer functions and scan conversion for a preset at output size S (cached);
    k multiplies the preset's point-spread function sds (given in pixels at S = 256)."""
    p, dr = ORGAN_PRESETS[organ], 0.5
    if p["probe"] == "linear":
        n_ax, n_lat = 2 * S, S
        X = np.broadcast_to(np.arange(n_lat, dtype=np.float32) + 0.5, (n_ax, n_lat))
        Y = np.broadcast_to((np.arange(n_ax, dtype=np.float32) * dr + 0.5)[:, None], (n_ax, n_lat))
        g = dict(convex=False, depth_px=S, fov=np.ones((S, S), bool), px_line=np.ones(n_ax, np.float32))
    else:
        tm, r0 = p["half_angle"], p["apex_radius"] * S
        apex_y = p["top"] * S - r0
        r_far = min(0.49 * S / np.sin(tm), S - 1 - apex_y)
        n_ax, n_lat = int(2 * (r_far - r0)) // 2 * 2, int(r_far * 2 * tm)
        dth = 2 * tm / n_lat
        rho = r0 + np.arange(n_ax, dtype=np.float32) * dr
        th = -tm + (np.arange(n_lat, dtype=np.float32) + 0.5) * dth
        X, Y = S / 2 + rho[:, None] * np.sin(th), apex_y + rho[:, None] * np.cos(th)
        yy, xx = np.mgrid[0:S, 0:S] + 0.5
        prho, pth = np.hypot(xx - S / 2, yy - apex_y), np.arctan2(xx - S / 2, yy - apex_y)
        fi, fj = (prho - r0) / (2 * dr), (pth + tm) / dth - 0.5          # envelope rows are every 2nd RF row
        fov = (fi >= 0) & (fi <= n_ax // 2 - 1) & (np.abs(pth) <= tm)
        flat = np.flatnonzero(fov)
        fi, fj = fi.ravel()[flat], np.clip(fj.ravel()[flat], 0, n_lat - 1)
        i0, j0 = np.minimum(fi.astype(int), n_ax // 2 - 2), np.minimum(fj.astype(int), n_lat - 2)
        g = dict(convex=True, depth_px=r_far - r0, fov=fov, flat=flat, i0=i0, j0=j0, px_line=rho * dth,
                 wi=(fi - i0).astype(np.float32), wj=(fj - j0).astype(np.float32),
                 apex=(S / 2, apex_y), r0=r0, r_far=r_far, half_angle=tm, dth=dth)
    depth = (np.arange(n_ax) * dr / g["depth_px"]).astype(np.float32)
    g.update(n_ax=n_ax, n_lat=n_lat, dr=dr, X=np.ascontiguousarray(X, np.float32), depth=depth,
             Y=np.ascontiguousarray(Y, np.float32), lat=((np.arange(n_lat) + 0.5) / n_lat).astype(np.float32))
    # lateral beam: Gaussian, sd grows away from the focus; per-row transfer function over lines
    sd_lines = p["lateral"] * k * (1 + 0.8 * ((depth - p["focus"]) / 0.5) ** 2) / g["px_line"]
    n_lfft = sfft.next_fast_len(n_lat + int(3 * sd_lines.max()) + 2)
    fl = np.arange(n_lfft // 2 + 1) / n_lfft
    g.update(n_lfft=n_lfft, lat_h=np.exp(-2 * (np.pi * sd_lines[:, None] * fl) ** 2).astype(np.float32))
    # axial pulse: Gaussian envelope (sd = axial px) on a carrier of 4 RF samples; keep f >= 0
    # (Hilbert) within the band the 2x-decimated IQ signal can hold, then demodulate by f0
    n_fft = sfft.next_fast_len(n_ax + int(8 * p["axial"] * k / dr) + 8) // 4 * 4
    sig, f = p["axial"] * k / dr, np.arange(n_fft // 2 + 1) / n_fft
    h = np.exp(-2 * (np.pi * sig * (f - 0.25)) ** 2)
    band = np.flatnonzero((h > 1e-3) & (np.abs(f - 0.25) < 0.25))
    g.update(n_fft=n_fft, band=band, h=h[band].astype(np.complex64)[:, None], dest=(band - n_fft // 4) % (n_fft // 2))
    return g


def _wavy(rng, lat, amp) -> np.ndarray:
    """Smooth random 1-D profile over the lateral coordinate lat (0-1), amplitude ~amp."""
    k = rng.uniform(0.5, 3.0, 3)
    return (amp * np.sin(2 * np.pi * (k[:, None] * lat + rng.random((3, 1))))).sum(0).astype(np.float32) / 1.7


def _layers(organ: str, g: dict, rng, S: int):
    """Background backscatter amplitude (tissue = 1) and attenuation multiplier maps."""
    d, lat = g["depth"][::2, None], g["lat"]          # layers are smooth: every 2nd RF row, then repeated
    line = lambda z, w=0.004: np.exp(-((d - z) / w) ** 2)
    if organ == "breast":
        z1 = 0.12 + 0.1 * rng.random() + _wavy(rng, lat, 0.04)
        z2 = 0.62 + 0.12 * rng.random() + _wavy(rng, lat, 0.05)
        z3 = z2 + 0.06 + _wavy(rng, lat, 0.02)
        band = 1 + 0.45 * np.sin(2 * np.pi * (d * rng.uniform(9, 14) + _wavy(rng, lat, 0.35)))
        cooper = 1 + np.float32(2.5) * (np.sin(2 * np.pi * (d * 7 + 1.5 * _wavy(rng, lat, 0.8))) > 0.93)
        muscle = 0.55 * (1 + 0.6 * np.sin(2 * np.pi * (d * 38 + _wavy(rng, lat, 0.5))))
        B = np.where(d < z1, 0.4 * cooper, np.where(d < z2, band, np.where(d < z3, 0.4, muscle)))
        B = B + 3.0 * line(0.012, 0.006)
    elif organ == "thyroid":
        z1, z2 = 0.14 + 0.06 * rng.random() + _wavy(rng, lat, 0.02), 0.82 + 0.08 * rng.random() + _wavy(rng, lat, 0.03)
        strap = 0.4 * (1 + 0.5 * np.sin(2 * np.pi * (d * 45 + _wavy(rng, lat, 0.3))))
        B = np.where(d < z1, strap, np.where(d < z2, 1.0, 0.35)) + 2.5 * line(0.01, 0.005) + 1.2 * line(z1, 0.006)
    else:
        z1 = 0.05 + 0.03 * rng.random() + _wavy(rng, lat, 0.01)
        z2 = z1 + 0.04 + 0.03 * rng.random()
        muscle = 0.5 * (1 + 0.5 * np.sin(2 * np.pi * d * 70))
        B = np.where(d < z1, 0.35, np.where(d < z2, muscle, 1.0)) + 2.0 * line(z1, 0.005) + 2.5 * line(z2, 0.005)
    return np.repeat(B.astype(np.float32), 2, axis=0), np.ones((g["n_ax"], g["n_lat"]), np.float32)


def _tube(g, p, ang, length, r, alpha, B, wall):
    """Composite an anechoic vessel: segment from p (pixels) at angle ang, given length and radius r."""
    ux, uy = math.cos(ang), math.sin(ang)
    win = _rf_window(g, p[0] + ux * length / 2, p[1] + uy * length / 2, length / 2 + r + 3)
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


def _lesion_fields(L: dict, x, y):
    """Soft inside weight (0.5 on the edge), halo ring and hard mask at points (x, y) in pixels.

    The edge is r(phi) in units of the ellipse radius, looked up in L["table"] (4096 angles)."""
    dx, dy = x - L["cx"], y - L["cy"]
    c, s = math.cos(L["theta"]), math.sin(L["theta"])
    u, v = (dx * c + dy * s) / L["a"], (-dx * s + dy * c) / L["b"]
    rho = np.hypot(u, v)
    idx = ((np.arctan2(v, u) + math.pi) * (4096 / (2 * math.pi))).astype(np.int32)
    r = L["table"][np.minimum(idx, 4095)]
    t = (r - rho) * (1 / L["blur"])
    return 0.5 + 0.5 * np.tanh(0.5 * t), np.exp(-(((rho - r) * 10) ** 2)), rho <= r


def _edge_table(harm, spikes) -> np.ndarray:
    """r(phi) on 4096 angles: 1 + low-frequency harmonics (shape) + narrow spikes (margin)."""
    phi = -np.pi + (np.arange(4096) + 0.5) * (2 * np.pi / 4096)
    r = 1.0 + sum(A * np.cos(k * phi + ph) for k, A, ph in harm)
    for ang, h, wdt in spikes:
        r = r + h * np.exp(-((((phi - ang + np.pi) % (2 * np.pi)) - np.pi) / wdt) ** 2)
    return r.astype(np.float32)


def _draw_latent(rng, forced: dict, noise: float) -> tuple[dict, dict]:
    cls = {}
    for a in ATTRIBUTES:
        labels = ATTRIBUTE_LABELS[a]
        cls[a] = forced.get(a) or labels[int(rng.integers(len(labels)))]
    lat = {"echo_db": float(rng.uniform(*ECHO_DB[cls["echo"]]))}
    irr_lo, irr_hi = (T_IRREG, IRREG_MAX) if cls["shape"] == "Irregular" else (0.0, T_IRREG)
    ar_lo, ar_hi = {"Round": (1.0, T_ROUND), "Oval": (T_ROUND, ASPECT_MAX)}.get(cls["shape"], (1.0, 1.9))
    lat.update(shape_aspect=float(rng.uniform(ar_lo, ar_hi)), shape_irregularity=float(rng.uniform(irr_lo, irr_hi)))
    lat["margin_blur"] = float(rng.uniform(*((0.0, T_MARGIN) if cls["margin"] == "Circumscribed" else (T_MARGIN, 1.0))))
    lat["noise"] = noise
    return cls, lat


def _fine_margin(rng, m: float, a_px: float, k: float) -> tuple[float, list]:
    """Margin evidence at native scale: edge blur and many short, narrow spicules sized in pixels
    (times k), returned in the units of :func:`_lesion_fields` (fractions of the radius a_px).

    m -> 0: a sharp edge (blur ~k pixels) with tiny bumps; m -> 1: an indistinct edge (blur ~6 k
    pixels) with 24-60 spicules up to 8 k pixels long and 1-2 k pixels wide, i.e. about one pixel
    of a 224 px full view when the original is 1024 px and k = 1.
    """
    blur = k * (0.3 + 6.0 * m) / a_px
    n_sp = int(rng.integers(24, 61))
    spikes = [(rng.uniform(-np.pi, np.pi), k * m * rng.uniform(3.0, 8.0) / a_px,
               k * rng.uniform(1.0, 2.0) / a_px) for _ in range(n_sp)]
    return blur, spikes


def generate_case(seed: int, organ: str = "liver", size: int = 256, attribute_classes: dict | None = None,
                  detail_scale: float | None = None) -> SynthCase:
    """Simulate one B-mode image of `organ` (size x size pixels) with one lesion.

    attribute_classes forces classes, e.g. {"echo": "Hypoechoic"}; the others are drawn
    uniformly. The latent value is then drawn uniformly inside the class interval. Returns a
    SynthCase whose box is the tight box of the mask in output pixels. Deterministic in
    (seed, organ, size, attribute_classes, detail_scale). Raises ValueError for an unknown
    organ/attribute/class or a bad size / detail_scale.

    detail_scale: None (default) draws the same picture at any size: the point-spread function, the
    speckle grain and the margin's structure scale with the image (S / 256 of their 256 px sizes). A
    number fixes the fine structure in pixels instead (k = detail_scale times the 256 px sizes), as
    a higher-frequency probe would: at size 1024 and detail_scale 1 the speckle grain is ~2 x 4
    pixels and the margin is drawn by :func:`_fine_margin` (blur and spicules of a few pixels),
    finer than one pixel of a 224 px full view (4.6 original pixels), so margin and isoechoic
    texture are evidence that only a crop at native resolution keeps; echo level, shape and
    posterior features stay visible at any scale. Anatomy, lesion size and placement are the same.
    """
    p = _check_organ(organ)
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    if detail_scale is not None and not (isinstance(detail_scale, (int, float)) and 0.25 <= detail_scale <= 64):
        raise ValueError(f"detail_scale must be None or a number of pixels in [0.25, 64], got {detail_scale!r}")
    forced = dict(attribute_classes or {})
    for a, c in forced.items():
        check_attribute(a)
        if c not in ATTRIBUTE_LABELS[a]:
            raise ValueError(f"unknown {a} class {c!r}; expected one of {ATTRIBUTE_LABELS[a]}")
    S, rng = int(size), np.random.default_rng(seed)
    k = S / 256 if detail_scale is None else float(detail_scale)
    g = _geometry(organ, S, k)
    cls, lat = _draw_latent(rng, forced, float(rng.random()))
    # lesion geometry: major diameter 12-35 % of the width, harmonics for irregularity, spikes for margin
    a = rng.uniform(0.06, 0.175) * S
    w = rng.uniform(0.3, 1.0, 3)
    amps = w * lat["shape_irregularity"] * np.sqrt(2) / np.linalg.norm(w)
    m = lat["margin_blur"]
    n_sp = int(rng.integers(6, 14))
    spikes = [(rng.uniform(-np.pi, np.pi), m ** 1.5 * rng.uniform(0.08, 0.3), rng.uniform(0.05, 0.1)) for _ in range(n_sp)]
    harm = list(zip((3, 4, 5), amps, rng.uniform(0, 2 * np.pi, 3)))
    blur = 0.01 + 0.12 * m
    if detail_scale is not None:                     # the coarse spikes above are replaced by fine ones
        blur, spikes = _fine_margin(rng, m, a / lat["shape_aspect"] ** 0.5, k)
    table = _edge_table(harm, spikes)
    # so the farthest edge point is 6-17.5 % of S from the centre (native: of the outline before its spicules,
    # so spicules do not shrink the lesion, a cue visible at any scale)
    a = a / float((table if detail_scale is None else _edge_table(harm, [])).max())
    L = dict(a=float(a), b=float(a / lat["shape_aspect"]), theta=float(rng.uniform(-0.4, 0.4)),
             blur=blur, table=table)
    R = float(a * table.max()) + 2.0                                   # bounds every mask pixel
    lo, hi = p["lesion_depth"]
    if g["convex"]:
        r0, rf, sin_t = g["r0"], g["r_far"], math.sin(g["half_angle"])
        fit = 0.95 * (sin_t * (rf - 3) - 2) / (1 + sin_t)                # largest R that fits in the fan
        if R > fit:                                                    # shrink the lesion to fit
            scale = (fit - 2) / (R - 2)
            L["a"], L["b"], R = L["a"] * scale, L["b"] * scale, fit
        hi_r = rf - R - 3
        rho = rng.uniform(min(max(r0 + lo * (rf - r0) + R, (R + 2) / sin_t), hi_r), hi_r)
        th_max = max(0.0, g["half_angle"] - math.asin(min(1.0, (R + 2) / rho)))
        th = rng.uniform(-th_max, th_max)
        L["cx"], L["cy"] = float(g["apex"][0] + rho * math.sin(th)), float(g["apex"][1] + rho * math.cos(th))
    else:
        L["cx"] = rng.uniform(R + 2, S - R - 2)
        L["cy"] = rng.uniform(min(lo * S + R, S - R - 2), max(min(hi * S, S - R - 2), min(lo * S + R, S - R - 2)))
    # tissue, vessels, lesion on the RF grid
    B, alpha = _layers(organ, g, rng, S)
    X, Y, touched = g["X"], g["Y"], []
    for _ in range(int(rng.integers(p["vessels"][0], p["vessels"][1] + 1))):
        pt, ang, rv = rng.uniform(0.1 * S, 0.9 * S, 2).tolist(), rng.uniform(0, 2 * np.pi), rng.uniform(0.015, 0.04) * S
        ln = rng.uniform(0.0, 0.4) * S                                 # 0 = vessel seen in cross-section
        if _seg_dist((L["cx"], L["cy"]), pt, ang, ln) > R + rv + 0.03 * S:
            touched.append(_tube(g, pt, ang, ln, rv, alpha, B, float(rng.choice([0.0, 1.5]))))
    if organ == "thyroid":                                            # carotid artery on the far side
        side = 0.1 * S if L["cx"] > S / 2 else 0.9 * S
        cy, rc = rng.uniform(0.4, 0.6) * S, rng.uniform(0.07, 0.1) * S
        if np.hypot(L["cx"] - side, L["cy"] - cy) > R + rc + 4:
            touched.append(_tube(g, (side, cy), 0.0, 0.0, rc, alpha, B, 1.5))
    ri, rj = _rf_window(g, L["cx"], L["cy"], R)
    wl, halo, _ = _lesion_fields(L, X[ri, rj], Y[ri, rj])
    b_ref = float(B[ri, rj].mean())
    echo = cls["echo"]
    halo_gain = rng.uniform(-0.85, -0.6) if rng.random() < 0.6 else rng.uniform(1.5, 2.5)
    halo_gain *= 1.0 if echo == "Isoechoic" else (rng.random() < 0.3) * 0.4
    shadow = (echo == "Hyperechoic" and rng.random() < 0.35) or (
        echo == "Hypoechoic" and (cls["shape"] == "Irregular" or cls["margin"] != "Circumscribed") and rng.random() < 0.4)
    f_att = rng.uniform(3.0, 6.0) if shadow else {"Anechoic": rng.uniform(0.0, 0.2)}.get(echo, rng.uniform(0.8, 1.3))
    lat["atten_ratio"] = float(f_att)
    inside = np.float32(10 ** (lat["echo_db"] / 20) * b_ref)
    B[ri, rj] = (B[ri, rj] * (1 - wl) + inside * wl) * (1 + halo_gain * halo)
    alpha[ri, rj] += (f_att - 1) * wl
    touched.append(rj)
    s_in = (rng.choice([0.2 * p["texture"], min(0.9, max(0.6, 2.5 * p["texture"]))]) if echo == "Isoechoic"
            else p["texture"] * rng.uniform(0.6, 1.5))
    # scatterer amplitude (log domain): tissue x texture x attenuation x TGC, then electronic noise
    n_ax, n_lat, dr, tx = g["n_ax"], g["n_lat"], g["dr"], p["texture"]
    kpx = p["atten_db"] * np.log(10) / 20 / g["depth_px"]
    dpx = g["depth"] * g["depth_px"]
    tgc = (kpx * dpx * rng.uniform(0.7, 0.92) + 0.15 * _wavy(rng, g["depth"], 1.0)).astype(np.float32)
    tex = _smooth_field(rng, (n_ax, n_lat), (p["texture_px"] * k / dr,
                                             p["texture_px"] * k / float(np.median(g["px_line"]))))
    big = _smooth_field(rng, (n_ax, n_lat), (n_ax / 5, n_lat / 5))
    v = float(tex.var())          # log-normal texture with its mean energy removed: no brightness change
    logA = np.log(B + np.float32(1e-4))
    logA += tx * tex
    logA += 0.12 * big
    logA += (tgc - kpx * dpx - tx * tx * v)[:, None]
    s_w = tx + (s_in - tx) * wl
    logA[ri, rj] += (s_w - tx) * tex[ri, rj] - (s_w * s_w - tx * tx) * v
    cols = slice(min(c.start for c in touched), max(c.stop for c in touched))   # beams that cross a change
    logA[:, cols] -= np.cumsum(alpha[:, cols] - 1, axis=0) * np.float32(kpx * dr)
    noise_row = (10 ** ((-58 + 22 * lat["noise"]) / 20) * np.exp(tgc))[:, None]   # electronic noise, then TGC
    rf = rng.standard_normal((n_ax, n_lat), dtype=np.float32)
    rf *= np.hypot(np.exp(logA, out=logA), noise_row)
    # lateral beam (per-row Gaussian in the line-frequency domain)
    rf = sfft.irfft(sfft.rfft(rf, n=g["n_lfft"], axis=1) * g["lat_h"], n=g["n_lfft"], axis=1)[:, :n_lat]
    # axial pulse + Hilbert + IQ decimation by 2 in one FFT pair
    spec = sfft.rfft(rf, n=g["n_fft"], axis=0)
    base = np.zeros((g["n_fft"] // 2, n_lat), np.complex64)
    base[g["dest"]] = spec[g["band"]] * g["h"]
    env = np.abs(sfft.ifft(base, axis=0))[: n_ax // 2]
    # scan conversion and log compression
    if g["convex"]:
        i0, j0, wi, wj = g["i0"], g["j0"], g["wi"], g["wj"]
        v = (env[i0, j0] * (1 - wi) + env[i0 + 1, j0] * wi) * (1 - wj) + (env[i0, j0 + 1] * (1 - wi) + env[i0 + 1, j0 + 1] * wi) * wj
        out = np.zeros(S * S, np.float32)
        out[g["flat"]] = v
        env_img = out.reshape(S, S)
    else:
        env_img = env
    ref = float(env_img[g["fov"]].mean())
    gray = rng.uniform(95, 120) + 255 / p["dynamic_range"] * 20 * np.log10(env_img / ref + 1e-6)
    image = np.clip(gray, 0, 255).astype(np.uint8)
    image[~g["fov"]] = 0
    # exact lesion mask on output pixel centres
    x0, x1 = max(0, int(L["cx"] - R) - 1), min(S, int(L["cx"] + R) + 2)
    y0, y1 = max(0, int(L["cy"] - R) - 1), min(S, int(L["cy"] + R) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    mask = np.zeros((S, S), bool)
    mask[y0:y1, x0:x1] = _lesion_fields(L, xx, yy)[2]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    diff = {a_: min(1.0, closeness(a_, lat) + 0.1 * lat["noise"]) for a_ in ATTRIBUTES}
    posterior = "shadowing" if shadow else ("enhancement" if echo == "Anechoic" else "none")
    return SynthCase(image=image, box=box, mask=mask, organ=organ, attributes=cls, latent=lat, difficulty=diff,
                     seed=int(seed), fov=g["fov"].copy(), meta=dict(posterior=posterior, lesion_center=(L["cx"], L["cy"]),
                                                             lesion_radius=L["a"], halo_gain=float(halo_gain)))


def _rf_window(g: dict, cx: float, cy: float, R: float):
    """Index slices of the RF grid covering the disc of radius R pixels around (cx, cy)."""
    if not g["convex"]:
        return (slice(max(0, int((cy - R - 0.5) / g["dr"]) - 2), min(g["n_ax"], int((cy + R - 0.5) / g["dr"]) + 3)),
                slice(max(0, int(cx - R) - 2), min(g["n_lat"], int(cx + R) + 3)))
    rho, th = np.hypot(cx - g["apex"][0], cy - g["apex"][1]), np.arctan2(cx - g["apex"][0], cy - g["apex"][1])
    dth = np.arcsin(min(1.0, R / rho))
    i = ((rho - R - g["r0"]) / g["dr"], (rho + R - g["r0"]) / g["dr"])
    j = ((th - dth + g["half_angle"]) / g["dth"], (th + dth + g["half_angle"]) / g["dth"])
    return (slice(max(0, int(i[0]) - 2), min(g["n_ax"], int(i[1]) + 3)),
            slice(max(0, int(j[0]) - 2), min(g["n_lat"], int(j[1]) + 3)))


def generate_samples(organ: str, n: int, seed: int, size: int = 256, attributes=ATTRIBUTES,
                     split: str = "", start: int = 0, detail_scale: float | None = None
                     ) -> Iterator[tuple[Sample, Image.Image]]:
    """Yield n (Sample, PIL grayscale image) pairs, samples start .. start+n-1; sample i depends only
    on (organ, seed, size, i), so any window of a seed's stream can be drawn on its own.

    The asked attribute cycles through `attributes` and its class cycles through the labels, so
    both are balanced. c = 1 when the two raters agree and then y = their label; when they
    disagree c = 0 and y = the generator's true class (both rater labels kept). Boxes are in
    pixels of the size x size image; image_path is relative ("images/<id>.png", caller writes it).
    detail_scale: see :func:`generate_case` (None: the same picture at any size).
    """
    _check_organ(organ)
    attributes = tuple(attributes)
    for a in attributes:
        check_attribute(a)
    for i in range(int(start), int(start) + int(n)):
        ss = np.random.SeedSequence([int(seed), zlib.crc32(organ.encode()), i])
        case_seed, rater_seed = (int(s) for s in ss.generate_state(2))
        attr = attributes[i % len(attributes)]
        labels = ATTRIBUTE_LABELS[attr]
        case = generate_case(case_seed, organ, size, {attr: labels[(i // len(attributes)) % len(labels)]}, detail_scale)
        ra, rb = simulate_raters(case, attr, rater_seed)
        c = int(ra == rb)
        sid = f"{organ}-{split}-{i:05d}"
        sample = Sample(id=sid, image_path=f"images/{sid}.png", box=case.box, attribute=attr,
                        label=ra if c else case.attributes[attr], c=c, organ=organ, question="",
                        rater_labels=(ra, rb), difficulty=case.difficulty[attr], image_size=(size, size), split=split,
                        meta=dict(latent=case.latent, seed=case.seed, true_attributes=case.attributes,
                                  posterior=case.meta["posterior"], source="synthetic"))
        yield sample, Image.fromarray(case.image, mode="L")

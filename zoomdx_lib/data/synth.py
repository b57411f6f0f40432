"""Synthetic B-mode ultrasound cases whose lesion attributes follow from known latent values.

Long because the lesion is one pipeline whose steps share the RF grid; each step is a function
and each of its numbers a named constant. Physics, in the order :func:`generate_case` runs it
(all on an RF grid: depth samples x scan lines, float32):
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
Steps 2 (noise) to 4 are the scanner (:mod:`.bmode`); the organ's layers and vessels are
:mod:`.anatomy`.
Each attribute has a continuous latent value (echo: lesion/tissue backscatter contrast in
dB; shape: aspect ratio and low-frequency radial irregularity; margin: edge blur/spiculation
0-1); its class follows from fixed boundaries, and two simulated sonographers read the latent
value through their own noise and bias (:mod:`zoomdx_lib.data.raters`). Determinism: only
numpy.random.default_rng(seed), drawn in a fixed order (the steps of generate_case in turn).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image

from ..schema import ATTRIBUTE_LABELS, ATTRIBUTES, Sample, check_attribute
from .anatomy import add_vessels, layers, wavy
from .bmode import GRAY_LEVEL, envelope, log_compress, rf_window, scan_convert, scan_geometry, scatterers, smooth_field
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


# Imaging styles: changes to an organ preset that bring its images closer to one real scanner's. "default"
# is the generator as its presets say. "bus_bra" was fitted, statistic by statistic, to BUS-BRA's breast
# train folds 1-2 (:mod:`zoomdx_lib.eval.realism`, notebook 01; fold 3 never looked at): a darker image
# (grey mean), a wider dynamic range (less grey spread), a coarser point-spread function and texture
# (speckle grain 2x axial, 2.3x lateral), lesions about twice as large and less tilted. `organs` names
# the organs whose real images it was fitted to (pretraining applies a style only to those).
STYLES: dict[str, dict] = {
    "default": dict(organs=()),
    "bus_bra": dict(organs=("breast",), gray_level=(53.0, 75.0), dynamic_range=100.0, psf_scale=(2.4, 3.0),
                    texture_scale=2.0, lesion_radius=(0.11, 0.32), max_tilt=0.1),
}


def check_style(style: str) -> str:
    """`style` if it is a key of :data:`STYLES`, else ValueError naming the known ones."""
    if style not in STYLES:
        raise ValueError(f"unknown imaging style {style!r}; expected one of {sorted(STYLES)}")
    return style


def styled_preset(organ: str, style: str = "default") -> dict:
    """The organ's preset with `style` applied, plus the case-level numbers a style may change
    (``gray_level``, ``lesion_radius``, ``max_tilt``; their defaults are the module's constants).

    >>> styled_preset("breast")["axial"], round(styled_preset("breast", "bus_bra")["axial"], 3)
    (0.8, 1.92)
    >>> styled_preset("breast")["gray_level"] == GRAY_LEVEL
    True
    """
    p = dict(_check_organ(organ), gray_level=GRAY_LEVEL, lesion_radius=LESION_RADIUS, max_tilt=MAX_TILT)
    st = STYLES[check_style(style)]
    ax, lat = st.get("psf_scale", (1.0, 1.0))
    p.update(axial=p["axial"] * ax, lateral=p["lateral"] * lat,
             texture_px=p["texture_px"] * st.get("texture_scale", 1.0),
             **{k: st[k] for k in ("gray_level", "dynamic_range", "lesion_radius", "max_tilt") if k in st})
    return p


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


# The case's numbers. Pixels are output-image pixels; "of S" = a fraction of the output size S.
MIN_SIZE = 64                        # smallest output side, pixels
DETAIL_SCALE_RANGE = (0.25, 64)      # detail_scale bounds (multiples of the 256 px structure sizes)
# lesion outline (radius units: fractions of the ellipse radius)
LESION_RADIUS = (0.06, 0.175)        # farthest edge point from the centre, of S (12-35 % diameter)
SHAPE_HARMONICS = (3, 4, 5)          # low-frequency radial harmonics that carry irregularity
HARMONIC_WEIGHT = (0.3, 1.0)         # their relative weights, drawn uniformly
COARSE_SPIKES = (6, 14)              # number of margin spikes at the default scale, [lo, hi)
SPIKE_HEIGHT = (0.08, 0.3)           # spike height (radius units), times margin_blur ** SPIKE_POWER
SPIKE_POWER = 1.5
SPIKE_WIDTH = (0.05, 0.1)            # spike half-width, radians of the outline angle
EDGE_BLUR = (0.01, 0.12)             # edge blur = base + slope x margin_blur (radius units)
MAX_TILT = 0.4                       # major axis tilt either way, radians
LESION_PAD = 2.0                     # pixels past the outline that bound every mask pixel and margins
FAN_FILL = 0.95                      # a convex probe's lesion fills at most this of the room in the fan
FAN_EDGE = 3.0                       # pixels kept between the lesion bound and the fan's far arc
# the lesion's acoustics
P_DARK_HALO = 0.6                    # a dark (else bright) ring on the edge
DARK_HALO_GAIN = (-0.85, -0.6)
BRIGHT_HALO_GAIN = (1.5, 2.5)
P_HALO_UNLESS_ISO = 0.3              # non-isoechoic lesions keep a faint halo this often ...
HALO_UNLESS_ISO = 0.4                # ... at this fraction of the gain (isoechoic: the full gain)
P_SHADOW_HYPERECHOIC = 0.35          # posterior shadowing of hyperechoic lesions
P_SHADOW_HYPOECHOIC = 0.4            # ... of hypoechoic ones that are irregular or not circumscribed
ATTEN_SHADOW = (3.0, 6.0)            # lesion / tissue attenuation ratio, shadowing
ATTEN_ANECHOIC = (0.0, 0.2)          # ... a cyst (posterior enhancement)
ATTEN_OTHER = (0.8, 1.3)             # ... anything else
ISO_TEXTURE = (0.2, 2.5, 0.6, 0.9)   # isoechoic: 0.2 x tissue texture, or 2.5 x it within [0.6, 0.9]
TEXTURE_SPREAD = (0.6, 1.5)          # other lesions: tissue's texture times this
# the scan
TGC_FRACTION = (0.7, 0.92)           # share of the background attenuation time-gain compensation undoes
TGC_RIPPLE = 0.15                    # its smooth error with depth (log amplitude)
GAIN_FIELD_CELLS = 5                 # a coarse gain field varies over a fifth of the grid ...
GAIN_FIELD_SD = 0.12                 # ... with this sd (log amplitude)
AMPLITUDE_FLOOR = 1e-4               # added before the log
NOISE_DIFFICULTY = 0.1               # difficulty added per unit of noise


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

def _check_case_args(size, attribute_classes: dict | None, detail_scale) -> dict:
    """The forced classes as a dict; ValueError naming a bad size, detail_scale, attribute or class."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} pixels, got {size}")
    lo, hi = DETAIL_SCALE_RANGE
    if detail_scale is not None and not (isinstance(detail_scale, (int, float)) and lo <= detail_scale <= hi):
        raise ValueError(f"detail_scale must be None or a number of pixels in [{lo}, {hi}], got {detail_scale!r}")
    forced = dict(attribute_classes or {})
    for a, c in forced.items():
        check_attribute(a)
        if c not in ATTRIBUTE_LABELS[a]:
            raise ValueError(f"unknown {a} class {c!r}; expected one of {ATTRIBUTE_LABELS[a]}")
    return forced


def _probe(p: dict, S: int, k: float) -> dict:
    """The (styled) preset `p`'s probe at output size S (cached in :func:`.bmode.scan_geometry`)."""
    return scan_geometry(p["probe"], S, k, p["axial"], p["lateral"], p["focus"],
                         p.get("half_angle"), p.get("top"), p.get("apex_radius"))


def _lesion_outline(rng, lat: dict, S: int, k: float, native: bool, p: dict) -> dict:
    """The lesion's outline (centre not yet placed): semi-axes a, b and tilt theta (pixels, radians),
    edge blur and the r(phi) table of :func:`_lesion_fields`. Harmonics give irregularity, spikes
    the margin; `native` (detail_scale set) replaces the coarse spikes by :func:`_fine_margin`'s; the
    radius range and the largest tilt are the (styled) preset `p`'s."""
    a = rng.uniform(*p["lesion_radius"]) * S
    w = rng.uniform(*HARMONIC_WEIGHT, len(SHAPE_HARMONICS))
    amps = w * lat["shape_irregularity"] * np.sqrt(2) / np.linalg.norm(w)
    m = lat["margin_blur"]
    n_sp = int(rng.integers(*COARSE_SPIKES))
    spikes = [(rng.uniform(-np.pi, np.pi), m ** SPIKE_POWER * rng.uniform(*SPIKE_HEIGHT), rng.uniform(*SPIKE_WIDTH))
              for _ in range(n_sp)]
    harm = list(zip(SHAPE_HARMONICS, amps, rng.uniform(0, 2 * np.pi, len(SHAPE_HARMONICS))))
    blur = EDGE_BLUR[0] + EDGE_BLUR[1] * m
    if native:
        blur, spikes = _fine_margin(rng, m, a / lat["shape_aspect"] ** 0.5, k)
    table = _edge_table(harm, spikes)
    # so the farthest edge point is LESION_RADIUS of S from the centre (native: of the outline before
    # its spicules, so spicules do not shrink the lesion, a cue visible at any scale)
    a = a / float((_edge_table(harm, []) if native else table).max())
    return dict(a=float(a), b=float(a / lat["shape_aspect"]), theta=float(rng.uniform(-p["max_tilt"], p["max_tilt"])),
                blur=blur, table=table)


def _place_lesion(rng, L: dict, g: dict, S: int, depth: tuple[float, float]) -> float:
    """Draw the lesion centre L["cx"], L["cy"] (pixels) inside the seen region, at `depth` (fractions
    of S or of the fan's depth); a lesion too big for a fan is shrunk. Returns the radius R (pixels)
    that bounds every mask pixel."""
    R = float(L["a"] * L["table"].max()) + LESION_PAD
    lo, hi = depth
    if g["convex"]:
        r0, rf, sin_t = g["r0"], g["r_far"], math.sin(g["half_angle"])
        fit = FAN_FILL * (sin_t * (rf - FAN_EDGE) - LESION_PAD) / (1 + sin_t)   # largest R that fits in the fan
        if R > fit:
            scale = (fit - LESION_PAD) / (R - LESION_PAD)
            L["a"], L["b"], R = L["a"] * scale, L["b"] * scale, fit
        hi_r = rf - R - FAN_EDGE
        rho = rng.uniform(min(max(r0 + lo * (rf - r0) + R, (R + LESION_PAD) / sin_t), hi_r), hi_r)
        th_max = max(0.0, g["half_angle"] - math.asin(min(1.0, (R + LESION_PAD) / rho)))
        th = rng.uniform(-th_max, th_max)
        L["cx"], L["cy"] = float(g["apex"][0] + rho * math.sin(th)), float(g["apex"][1] + rho * math.cos(th))
    else:
        L["cx"] = rng.uniform(R + LESION_PAD, S - R - LESION_PAD)
        top, bottom = min(lo * S + R, S - R - LESION_PAD), min(hi * S, S - R - LESION_PAD)
        L["cy"] = rng.uniform(top, max(bottom, top))
    return R


def _posterior(rng, cls: dict) -> tuple[bool, float]:
    """(shadowing?, lesion / tissue attenuation ratio) for the classes `cls`."""
    echo = cls["echo"]
    if echo == "Hyperechoic":
        shadow = rng.random() < P_SHADOW_HYPERECHOIC
    elif echo == "Hypoechoic" and (cls["shape"] == "Irregular" or cls["margin"] != "Circumscribed"):
        shadow = rng.random() < P_SHADOW_HYPOECHOIC
    else:
        shadow = False
    if shadow:
        return shadow, rng.uniform(*ATTEN_SHADOW)
    anechoic, other = rng.uniform(*ATTEN_ANECHOIC), rng.uniform(*ATTEN_OTHER)   # both drawn, whatever the class
    return shadow, anechoic if echo == "Anechoic" else other


def _add_lesion(rng, cls: dict, lat: dict, g: dict, L: dict, R: float, B, alpha) -> dict:
    """Composite the lesion into B (its echo level relative to the tissue around it, a halo on its
    edge) and alpha (its attenuation); sets lat["atten_ratio"]. Returns the RF window, the lesion
    weight wl there, the halo gain and whether it shadows."""
    window = rf_window(g, L["cx"], L["cy"], R)
    wl, halo, _ = _lesion_fields(L, g["X"][window], g["Y"][window])
    b_ref = float(B[window].mean())
    halo_gain = rng.uniform(*DARK_HALO_GAIN) if rng.random() < P_DARK_HALO else rng.uniform(*BRIGHT_HALO_GAIN)
    halo_gain *= 1.0 if cls["echo"] == "Isoechoic" else (rng.random() < P_HALO_UNLESS_ISO) * HALO_UNLESS_ISO
    shadow, f_att = _posterior(rng, cls)
    lat["atten_ratio"] = float(f_att)
    inside = np.float32(10 ** (lat["echo_db"] / 20) * b_ref)
    B[window] = (B[window] * (1 - wl) + inside * wl) * (1 + halo_gain * halo)
    alpha[window] += (f_att - 1) * wl
    return dict(window=window, wl=wl, halo_gain=halo_gain, shadow=shadow)


def _lesion_texture(rng, echo: str, tissue: float):
    """Texture strength (log-amplitude sd) inside the lesion; an isoechoic one differs only by it."""
    if echo == "Isoechoic":
        low, gain, lo, hi = ISO_TEXTURE
        return rng.choice([low * tissue, min(hi, max(lo, gain * tissue))])
    return tissue * rng.uniform(*TEXTURE_SPREAD)


def _log_amplitude(rng, g: dict, p: dict, k: float, B, alpha, lesion: dict, s_in, touched: list[slice]):
    """Scatterer log amplitude on the RF grid: tissue x texture x attenuation x TGC (log-normal
    texture with its mean energy removed, so texture changes no brightness). Returns it and the
    TGC per RF row (log amplitude)."""
    n_ax, n_lat, dr, tx = g["n_ax"], g["n_lat"], g["dr"], p["texture"]
    kpx = p["atten_db"] * np.log(10) / 20 / g["depth_px"]
    dpx = g["depth"] * g["depth_px"]
    tgc = (kpx * dpx * rng.uniform(*TGC_FRACTION) + TGC_RIPPLE * wavy(rng, g["depth"], 1.0)).astype(np.float32)
    tex = smooth_field(rng, (n_ax, n_lat), (p["texture_px"] * k / dr,
                                            p["texture_px"] * k / float(np.median(g["px_line"]))))
    big = smooth_field(rng, (n_ax, n_lat), (n_ax / GAIN_FIELD_CELLS, n_lat / GAIN_FIELD_CELLS))
    v = float(tex.var())
    logA = np.log(B + np.float32(AMPLITUDE_FLOOR))
    logA += tx * tex
    logA += GAIN_FIELD_SD * big
    logA += (tgc - kpx * dpx - tx * tx * v)[:, None]
    window, wl = lesion["window"], lesion["wl"]
    s_w = tx + (s_in - tx) * wl
    logA[window] += (s_w - tx) * tex[window] - (s_w * s_w - tx * tx) * v
    cols = slice(min(c.start for c in touched), max(c.stop for c in touched))   # beams that cross a change
    logA[:, cols] -= np.cumsum(alpha[:, cols] - 1, axis=0) * np.float32(kpx * dr)
    return logA, tgc


def _lesion_mask(L: dict, R: float, S: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Exact lesion mask on output pixel centres and its tight box (x1, y1, x2, y2), x2 = max col + 1."""
    x0, x1 = max(0, int(L["cx"] - R) - 1), min(S, int(L["cx"] + R) + 2)
    y0, y1 = max(0, int(L["cy"] - R) - 1), min(S, int(L["cy"] + R) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    mask = np.zeros((S, S), bool)
    mask[y0:y1, x0:x1] = _lesion_fields(L, xx, yy)[2]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask, (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def generate_case(seed: int, organ: str = "liver", size: int = 256, attribute_classes: dict | None = None,
                  detail_scale: float | None = None, style: str = "default") -> SynthCase:
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

    style: a key of :data:`STYLES` ("default": the organ preset as it is; "bus_bra": closer to
    BUS-BRA's breast scanner). The random draws are the same in every style, so a case differs
    between styles only in how it is imaged and in its lesion's size and tilt.
    """
    p = styled_preset(organ, style)
    forced = _check_case_args(size, attribute_classes, detail_scale)
    S, rng = int(size), np.random.default_rng(seed)
    k = S / 256 if detail_scale is None else float(detail_scale)
    g = _probe(p, S, k)
    cls, lat = _draw_latent(rng, forced, float(rng.random()))
    L = _lesion_outline(rng, lat, S, k, native=detail_scale is not None, p=p)
    R = _place_lesion(rng, L, g, S, p["lesion_depth"])
    B, alpha = layers(organ, g, rng, S)                               # tissue, vessels, lesion on the RF grid
    touched = add_vessels(rng, organ, p["vessels"], g, L, R, S, B, alpha)
    lesion = _add_lesion(rng, cls, lat, g, L, R, B, alpha)
    touched.append(lesion["window"][1])
    s_in = _lesion_texture(rng, cls["echo"], p["texture"])
    logA, tgc = _log_amplitude(rng, g, p, k, B, alpha, lesion, s_in, touched)
    env = envelope(scatterers(rng, logA, tgc, lat["noise"]), g)
    image = log_compress(rng, scan_convert(env, g, S), g, p["dynamic_range"], p["gray_level"])
    mask, box = _lesion_mask(L, R, S)
    diff = {a: min(1.0, closeness(a, lat) + NOISE_DIFFICULTY * lat["noise"]) for a in ATTRIBUTES}
    posterior = "shadowing" if lesion["shadow"] else ("enhancement" if cls["echo"] == "Anechoic" else "none")
    return SynthCase(image=image, box=box, mask=mask, organ=organ, attributes=cls, latent=lat, difficulty=diff,
                     seed=int(seed), fov=g["fov"].copy(),
                     meta=dict(posterior=posterior, lesion_center=(L["cx"], L["cy"]), lesion_radius=L["a"],
                               halo_gain=float(lesion["halo_gain"]),
                               **({"style": style} if style != "default" else {})))




def generate_samples(organ: str, n: int, seed: int, size: int = 256, attributes=ATTRIBUTES,
                     split: str = "", start: int = 0, detail_scale: float | None = None,
                     style: str = "default") -> Iterator[tuple[Sample, Image.Image]]:
    """Yield n (Sample, PIL grayscale image) pairs, samples start .. start+n-1; sample i depends only
    on (organ, seed, size, i), so any window of a seed's stream can be drawn on its own.

    The asked attribute cycles through `attributes` and its class cycles through the labels, so
    both are balanced. c = 1 when the two raters agree and then y = their label; when they
    disagree c = 0 and y = the generator's true class (both rater labels kept). Boxes are in
    pixels of the size x size image; image_path is relative ("images/<id>.png", caller writes it).
    detail_scale, style: see :func:`generate_case` (None, "default": the same picture at any size, as
    the organ's preset draws it).
    """
    _check_organ(organ)
    check_style(style)
    attributes = tuple(attributes)
    for a in attributes:
        check_attribute(a)
    for i in range(int(start), int(start) + int(n)):
        ss = np.random.SeedSequence([int(seed), zlib.crc32(organ.encode()), i])
        case_seed, rater_seed = (int(s) for s in ss.generate_state(2))
        attr = attributes[i % len(attributes)]
        labels = ATTRIBUTE_LABELS[attr]
        case = generate_case(case_seed, organ, size, {attr: labels[(i // len(attributes)) % len(labels)]}, detail_scale, style)
        ra, rb = simulate_raters(case, attr, rater_seed)
        c = int(ra == rb)
        sid = f"{organ}-{split}-{i:05d}"
        sample = Sample(id=sid, image_path=f"images/{sid}.png", box=case.box, attribute=attr,
                        label=ra if c else case.attributes[attr], c=c, organ=organ, question="",
                        rater_labels=(ra, rb), difficulty=case.difficulty[attr], image_size=(size, size), split=split,
                        meta=dict(latent=case.latent, seed=case.seed, true_attributes=case.attributes,
                                  posterior=case.meta["posterior"], source="synthetic",
                                  **({"style": style} if style != "default" else {})))
        yield sample, Image.fromarray(case.image, mode="L")

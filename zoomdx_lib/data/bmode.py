"""The scanner of the synthetic B-mode simulation (:mod:`zoomdx_lib.data.synth` draws the tissue).

The RF grid (depth samples x scan lines, float32) of a linear or convex probe and its scan
conversion to the output image, smooth random fields on that grid, the point-spread function
(lateral Gaussian beam, wider away from the focus; axial Gaussian-windowed pulse applied in the
Fourier domain together with the Hilbert transform and 2x IQ decimation, so one FFT pair gives
the envelope), electronic noise, the bilinear scan conversion and log compression to 8 bit.
Pixel quantities are output-image pixels.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft as sfft

RF_STEP = 0.5             # RF samples along depth, output pixels apart (envelope rows: every 2nd sample)
FIELD_SD = 1.6            # rescales the interpolated normal field to roughly unit sd
CARRIER = 0.25            # pulse carrier, cycles per RF sample (4 samples a period)
LATERAL_FOCUS_GROWTH = 0.8   # beam sd x (1 + growth x ((depth - focus) / 0.5)^2)
BAND_FLOOR = 1e-3         # pulse spectrum kept where its transfer function exceeds this
NOISE_DB = (-58, 22)      # electronic noise: -58 dB + 22 dB x the case's noise (0-1), before TGC
GRAY_LEVEL = (95, 120)    # mean gray level of the tissue
ENVELOPE_FLOOR = 1e-6     # added before the log compression


@lru_cache(maxsize=64)
def _interp(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation n_in -> n_out samples: left neighbour index and its right weight."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(pos.astype(int), n_in - 2)
    return i0, (pos - i0).astype(np.float32)[:, None]


def smooth_field(rng, shape: tuple[int, int], cells: tuple[float, float]) -> np.ndarray:
    """Zero-mean random float32 field of `shape` (RF samples) and roughly unit sd, varying over
    `cells` = (axial, lateral) RF samples; draws from the numpy Generator `rng`."""
    lo = rng.standard_normal(tuple(max(2, int(n / c) + 2) for n, c in zip(shape, cells)), dtype=np.float32)
    j, wj = _interp(shape[1], lo.shape[1])
    lo = (lo[:, j] * (1 - wj.T) + lo[:, j + 1] * wj.T)
    i, wi = _interp(shape[0], lo.shape[0])
    return (lo[i] * (1 - wi) + lo[i + 1] * wi) * np.float32(FIELD_SD)


def _linear_grid(S: int) -> dict:
    """A linear probe: S scan lines straight down, 2 S RF samples deep; the whole image is seen."""
    n_ax, n_lat = 2 * S, S
    X = np.broadcast_to(np.arange(n_lat, dtype=np.float32) + 0.5, (n_ax, n_lat))
    Y = np.broadcast_to((np.arange(n_ax, dtype=np.float32) * RF_STEP + 0.5)[:, None], (n_ax, n_lat))
    return dict(convex=False, depth_px=S, fov=np.ones((S, S), bool), px_line=np.ones(n_ax, np.float32),
                n_ax=n_ax, n_lat=n_lat, X=X, Y=Y)


def _convex_grid(S: int, half_angle: float, top: float, apex_radius: float) -> dict:
    """A convex probe: a fan of half-angle `half_angle` (radians) from an apex above the image whose
    skin line is `top` x S below the top edge; the scan-conversion lookup of every pixel in the fan."""
    tm, r0, dr = half_angle, apex_radius * S, RF_STEP
    apex_y = top * S - r0
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
    return dict(convex=True, depth_px=r_far - r0, fov=fov, flat=flat, i0=i0, j0=j0, px_line=rho * dth,
                wi=(fi - i0).astype(np.float32), wj=(fj - j0).astype(np.float32),
                apex=(S / 2, apex_y), r0=r0, r_far=r_far, half_angle=tm, dth=dth, n_ax=n_ax, n_lat=n_lat, X=X, Y=Y)


@lru_cache(maxsize=16)
def scan_geometry(probe: str, S: int, k: float, axial: float, lateral: float, focus: float,
                  half_angle: float | None = None, top: float | None = None,
                  apex_radius: float | None = None) -> dict:
    """RF grid, PSF transfer functions and scan conversion of a probe at output size S pixels (cached).

    probe "linear" or "convex" (the fan needs half_angle in radians, top and apex_radius as
    fractions of S); axial and lateral are the PSF sds in pixels at S = 256 (pulse envelope, beam
    at the focus), multiplied by k; focus is a fraction of the depth. Returns a dict: n_ax, n_lat,
    dr (pixels per RF sample), X, Y (pixel position of every RF sample), depth (0-1 per RF row),
    lat (0-1 per line), fov (bool S x S seen region), the FFT sizes and transfer functions.
    """
    g = _linear_grid(S) if probe == "linear" else _convex_grid(S, half_angle, top, apex_radius)
    n_ax, n_lat, dr = g["n_ax"], g["n_lat"], RF_STEP
    depth = (np.arange(n_ax) * dr / g["depth_px"]).astype(np.float32)
    g.update(dr=dr, X=np.ascontiguousarray(g["X"], np.float32), depth=depth,
             Y=np.ascontiguousarray(g["Y"], np.float32), lat=((np.arange(n_lat) + 0.5) / n_lat).astype(np.float32))
    # lateral beam: Gaussian, sd grows away from the focus; per-row transfer function over lines
    sd_lines = lateral * k * (1 + LATERAL_FOCUS_GROWTH * ((depth - focus) / 0.5) ** 2) / g["px_line"]
    n_lfft = sfft.next_fast_len(n_lat + int(3 * sd_lines.max()) + 2)
    fl = np.arange(n_lfft // 2 + 1) / n_lfft
    g.update(n_lfft=n_lfft, lat_h=np.exp(-2 * (np.pi * sd_lines[:, None] * fl) ** 2).astype(np.float32))
    # axial pulse: Gaussian envelope (sd = axial px) on a carrier of 4 RF samples; keep f >= 0
    # (Hilbert) within the band the 2x-decimated IQ signal can hold, then demodulate by f0
    n_fft = sfft.next_fast_len(n_ax + int(8 * axial * k / dr) + 8) // 4 * 4
    sig, f = axial * k / dr, np.arange(n_fft // 2 + 1) / n_fft
    h = np.exp(-2 * (np.pi * sig * (f - CARRIER)) ** 2)
    band = np.flatnonzero((h > BAND_FLOOR) & (np.abs(f - CARRIER) < CARRIER))
    g.update(n_fft=n_fft, band=band, h=h[band].astype(np.complex64)[:, None], dest=(band - n_fft // 4) % (n_fft // 2))
    return g


def rf_window(g: dict, cx: float, cy: float, R: float) -> tuple[slice, slice]:
    """Index slices (rows, lines) of the RF grid `g` covering the disc of radius R pixels around (cx, cy)."""
    if not g["convex"]:
        return (slice(max(0, int((cy - R - 0.5) / g["dr"]) - 2), min(g["n_ax"], int((cy + R - 0.5) / g["dr"]) + 3)),
                slice(max(0, int(cx - R) - 2), min(g["n_lat"], int(cx + R) + 3)))
    rho, th = np.hypot(cx - g["apex"][0], cy - g["apex"][1]), np.arctan2(cx - g["apex"][0], cy - g["apex"][1])
    dth = np.arcsin(min(1.0, R / rho))
    i = ((rho - R - g["r0"]) / g["dr"], (rho + R - g["r0"]) / g["dr"])
    j = ((th - dth + g["half_angle"]) / g["dth"], (th + dth + g["half_angle"]) / g["dth"])
    return (slice(max(0, int(i[0]) - 2), min(g["n_ax"], int(i[1]) + 3)),
            slice(max(0, int(j[0]) - 2), min(g["n_lat"], int(j[1]) + 3)))


def envelope(rf: np.ndarray, g: dict) -> np.ndarray:
    """Echo envelope (n_ax / 2 rows x n_lat lines) of the scatterer field `rf` (n_ax x n_lat) seen
    through the probe's point-spread function: lateral beam, then axial pulse + Hilbert + IQ
    decimation by 2 in one FFT pair."""
    n_ax, n_lat = g["n_ax"], g["n_lat"]
    rf = sfft.irfft(sfft.rfft(rf, n=g["n_lfft"], axis=1) * g["lat_h"], n=g["n_lfft"], axis=1)[:, :n_lat]
    spec = sfft.rfft(rf, n=g["n_fft"], axis=0)
    base = np.zeros((g["n_fft"] // 2, n_lat), np.complex64)
    base[g["dest"]] = spec[g["band"]] * g["h"]
    return np.abs(sfft.ifft(base, axis=0))[: n_ax // 2]


def scan_convert(env: np.ndarray, g: dict, S: int) -> np.ndarray:
    """The envelope on the S x S output image: as is for a linear probe, bilinear from the fan for a
    convex one (0 outside the fan)."""
    if not g["convex"]:
        return env
    i0, j0, wi, wj = g["i0"], g["j0"], g["wi"], g["wj"]
    v = (env[i0, j0] * (1 - wi) + env[i0 + 1, j0] * wi) * (1 - wj) + (env[i0, j0 + 1] * (1 - wi) + env[i0 + 1, j0 + 1] * wi) * wj
    out = np.zeros(S * S, np.float32)
    out[g["flat"]] = v
    return out.reshape(S, S)


def scatterers(rng, logA, tgc, noise: float) -> np.ndarray:
    """The RF scatterer field (n_ax x n_lat, float32): Gaussian amplitudes of exp(logA) plus electronic
    noise of NOISE_DB at `noise` (0-1) amplified by the TGC `tgc` (log amplitude per RF row);
    overwrites logA."""
    noise_row = (10 ** ((NOISE_DB[0] + NOISE_DB[1] * noise) / 20) * np.exp(tgc))[:, None]
    rf = rng.standard_normal(logA.shape, dtype=np.float32)
    rf *= np.hypot(np.exp(logA, out=logA), noise_row)
    return rf


def log_compress(rng, env_img, g: dict, dynamic_range: float,
                 gray_level: tuple[float, float] = GRAY_LEVEL) -> np.ndarray:
    """The 8-bit S x S image: log of the scan-converted envelope `env_img` over `dynamic_range` dB,
    the tissue's mean at a gray level drawn from `gray_level`; 0 outside the seen region g["fov"]."""
    ref = float(env_img[g["fov"]].mean())
    gray = rng.uniform(*gray_level) + 255 / dynamic_range * 20 * np.log10(env_img / ref + ENVELOPE_FLOOR)
    image = np.clip(gray, 0, 255).astype(np.uint8)
    image[~g["fov"]] = 0
    return image

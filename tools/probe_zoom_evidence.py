"""Is there a scale at which the zoom crop holds evidence the full view lacks? A probe of the margin.

    python tools/probe_zoom_evidence.py                       # native-detail margin as generated (1 024 px)
    python tools/probe_zoom_evidence.py --variant spicules    # fixed edge blur: spicules are the only cue

Fresh synthetic cases (the readability seeds of notebook 01, :func:`zoomdx_lib.eval.readability.readability_seed`)
are drawn at `--size` with `--detail-scale` (fine structure fixed in pixels). Each case is read from three
views of its true box widened by `--context` on each side:

- ``crop``: the zoom tool's crop at the turn-2 pixel budget `--crop-pixels`;
- ``native``: the same region at the original's own resolution (no resampling: an upper bound for any crop);
- ``full``: the same region cut from the full view the model gets in turn 1 (224 x 224 here).

Each view goes through several simple readers (a standardised logistic regression from scikit-learn on
hand-made features, fit on one seed, tested on another):

- ``histograms``: notebook 01's reference features (:func:`zoomdx_lib.eval.readability.view_features`);
- ``multiscale``: gradient-magnitude histograms after Gaussian smoothing at 0 / 1 / 2 / 4 pixels;
- ``polar`` / ``polar_smoothed``: the view unwrapped around its centre (radius in units of the box's
  half-sizes), then per angle the edge's steepness, width and position, the angular roughness of the ring
  at the edge, and the mean radial-gradient profile (``polar_smoothed``: after a 1-pixel Gaussian).

It prints one JSON line per reader: each view's accuracy and the paired differences (crop - full,
native - full) with 95 % bootstrap intervals over the test cases, and the majority rate.

``--variant spicules`` replaces, for this probe only, the generator's native margin (an edge blur that
grows with the margin latent plus 24-60 short spicules) by a fixed 1-pixel blur and 16-40 spicules
2-3 pixels wide and up to 10-30 pixels long: the spicules are then the only margin evidence.
"""
import argparse
import contextlib
import json
from unittest import mock

import numpy as np
from PIL import Image
from scipy import ndimage

from zoomdx_lib.data import synth
from zoomdx_lib.eval import readability as R
from zoomdx_lib.geometry import clean_box

VIEWS = ("crop", "native", "full")


def spicule_margin(rng, m: float, a_px: float, k: float):
    """The `spicules` variant of :func:`zoomdx_lib.data.synth._fine_margin`: fixed blur, spicules carry the class."""
    n_sp = int(rng.integers(16, 41))
    return k * 1.0 / a_px, [(rng.uniform(-np.pi, np.pi), k * m * rng.uniform(10.0, 30.0) / a_px,
                             k * rng.uniform(2.0, 3.0) / a_px) for _ in range(n_sp)]


def views_of(image: Image.Image, box, crop_pixels: int, context: float) -> dict:
    """{crop, native, full} grey 0-1 arrays of the box widened by `context`."""
    v = R.lesion_views(image, box, 112 * 112, 224 * 224, crop_pixels, context)
    gray = image.convert("L")
    region = clean_box(box, gray.size, pad_frac=context)[0] if context else box
    v["native"] = np.asarray(gray.crop(tuple(round(c) for c in region)), dtype=np.float32) / 255.0
    return v


def multiscale_features(view: np.ndarray) -> np.ndarray:
    out = []
    for s in (0, 1, 2, 4):
        smoothed = ndimage.gaussian_filter(view, s) if s else view
        gy, gx = np.gradient(smoothed)
        grad = np.hypot(gx, gy)
        out.append(np.histogram(grad, bins=16, range=(0, 0.3 / (1 + s)))[0] / grad.size)
    return np.concatenate(out)


def polar_features(view: np.ndarray, context: float, smooth: float = 0.0, n_theta: int = 96, n_r: int = 48) -> np.ndarray:
    h, w = view.shape
    v = ndimage.gaussian_filter(view, smooth) if smooth else view
    half_w, half_h = w / 2 / (1 + 2 * context), h / 2 / (1 + 2 * context)     # the box's half-sizes in view pixels
    theta = np.linspace(-np.pi, np.pi, n_theta, endpoint=False)
    r = np.linspace(0.3, 1.0 + 1.9 * context, n_r)
    xs = w / 2 + r[None, :] * half_w * np.cos(theta)[:, None]
    ys = h / 2 + r[None, :] * half_h * np.sin(theta)[:, None]
    P = ndimage.map_coordinates(v, [ys - 0.5, xs - 0.5], order=1, mode="nearest")   # angle x radius
    d = np.abs(np.diff(P, axis=1)) / (r[1] - r[0]) / max(half_w, half_h)            # per view pixel
    edge = np.argmax(d, axis=1)
    steep = d[np.arange(n_theta), edge]
    width = (d > 0.5 * steep[:, None]).sum(1)
    ring = P[:, (r > 0.85) & (r < 1.15)].mean(1)
    spectrum = np.abs(np.fft.rfft(ring - ring.mean()))
    rough = spectrum[8:].sum() / (spectrum[1:].sum() + 1e-6)
    profile = d.mean(0)
    return np.concatenate([[np.median(steep), steep.mean(), r[edge].std(), np.median(width), width.mean(), rough],
                           np.histogram(width, bins=8, range=(0, 16))[0] / n_theta,
                           np.histogram(np.log(steep + 1e-4), bins=8, range=(-6, 2))[0] / n_theta,
                           profile / (profile.max() + 1e-9)])


READERS = {
    "histograms": lambda v, aspect, ctx: R.view_features(v, aspect),
    "multiscale": lambda v, aspect, ctx: np.append(multiscale_features(v), np.log(aspect)),
    "polar": lambda v, aspect, ctx: np.append(polar_features(v, ctx), np.log(aspect)),
    "polar_smoothed": lambda v, aspect, ctx: np.append(polar_features(v, ctx, smooth=1.0), np.log(aspect)),
}


def read_cases(organ, attribute, n, part, size, detail_scale, crop_pixels, context):
    rows = []
    for box, label, image in R._cases(organ, attribute, n, R.readability_seed(organ, attribute, part), size, detail_scale):
        rows.append(((box[2] - box[0]) / (box[3] - box[1]), label, views_of(image, box, crop_pixels, context)))
    return rows


def reader_accuracy(train, test, reader, context, n_boot=1000, seed=0) -> dict:
    def table(rows):
        return ({v: np.stack([READERS[reader](views[v], aspect, context) for aspect, _, views in rows]) for v in VIEWS},
                np.array([label for _, label, _ in rows]))
    (Xtr, ytr), (Xte, yte) = table(train), table(test)
    r = R.compare_views(Xtr, ytr, Xte, yte, [("crop", "full"), ("native", "full")], n_boot, seed)
    return dict(reader=reader, **{k: [round(x, 3) for x in r[k]] for k in (*VIEWS, "crop_minus_full", "native_minus_full")},
                majority=round(r["majority"], 3))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organ", default="breast")
    ap.add_argument("--attribute", default="margin")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--detail-scale", type=float, default=1.0)
    ap.add_argument("--crop-pixels", type=int, default=224 * 224, help="turn-2 pixel budget of the crop")
    ap.add_argument("--context", type=float, default=0.25, help="fraction of the box kept around it on each side")
    ap.add_argument("--variant", choices=("generated", "spicules"), default="generated")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=160)
    ap.add_argument("--readers", default=",".join(READERS))
    args = ap.parse_args(argv)
    variant = mock.patch.object(synth, "_fine_margin", spicule_margin) if args.variant == "spicules" else contextlib.nullcontext()
    with variant:
        cases = {part: read_cases(args.organ, args.attribute, n, part, args.size, args.detail_scale, args.crop_pixels, args.context)
                 for part, n in (("train", args.n_train), ("test", args.n_test))}
    setup = dict(organ=args.organ, attribute=args.attribute, size=args.size, detail_scale=args.detail_scale,
                 crop_pixels=args.crop_pixels, context=args.context, variant=args.variant, n_train=args.n_train, n_test=args.n_test)
    for reader in args.readers.split(","):
        print(json.dumps(dict(setup, **reader_accuracy(cases["train"], cases["test"], reader, args.context))), flush=True)


if __name__ == "__main__":
    main()

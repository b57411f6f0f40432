"""Does looking closer add information? A reference classifier, independent of the VLM, reads each
attribute from the zoom crop and from the same region of the downsampled full view; and how the
synthetic speckle compares with real B-mode.

Two views of the TRUE lesion box of every case:

- ``crop``: the zoom tool's crop (:func:`zoomdx_lib.geometry.crop_image`, cut from the ORIGINAL image
  at the pixel budget of turn 2), i.e. what the model receives after its tool call;
- ``full``: the image resized to the model-input size the processor uses for turn 1, then the same
  box cut from it: everything the full view knows about the lesion.

Each view is read at the resolution the model gets it (grey and gradient histograms: fine texture)
and resampled to ``side x side`` (coarse layout), by a standardised logistic regression
(scikit-learn) trained on cases of one generator seed and tested on cases of another; accuracies and the paired
(crop - full) difference get 95 % bootstrap intervals over test cases. When the original is barely
larger than the model input, both views hold the same pixels and the difference is ~0: the data
would not reward zooming.

Speckle: the normalised autocorrelation of mean-removed grey patches away from the lesion gives the
grain's full width at half maximum, axial (down) and lateral (across), in pixels and as a fraction of
the image width, comparable between synthetic images and real B-mode (e.g. BUS-BRA).
"""
from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.synth import generate_samples
from ..geometry import clean_box, crop_image, crop_output_size, model_input_size
from . import metrics as M

VIEWS = ("crop", "full")


def readability_seed(organ: str, attribute: str, part: str) -> int:
    """Generator seed of the readability cases (a string no data split and no pretraining stream uses)."""
    return zlib.crc32(f"zoomdx-readability|{organ}|{attribute}|{part}".encode()) & 0x7FFFFFFF


def lesion_views(image: Image.Image, box: Sequence[float], min_pixels: int, max_pixels: int,
                 crop_pixels: int, context: float = 0.0) -> dict[str, np.ndarray]:
    """{"crop", "full"}: the lesion box as the zoom crop and as seen in the full view, grey 0-1, each at
    the resolution the model gets it (the crop at the turn-2 budget, the full-view region at its own size).
    context: both views cover the box widened by this fraction of its width / height on each side
    (clamped to the image), as the zoom tool's ``pad_frac`` does, so the tissue around the edge is kept.

    >>> im = Image.fromarray((np.arange(256 * 256) % 251).astype(np.uint8).reshape(256, 256))
    >>> v = lesion_views(im, (100, 100, 156, 128), 112 * 112, 224 * 224, 112 * 112)
    >>> v["crop"].shape, v["full"].shape
    ((84, 168), (24, 48))
    """
    gray = image.convert("L")
    if context:
        box = clean_box(box, gray.size, pad_frac=context)[0]
    crop = crop_image(gray, box, crop_pixels, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    mw, mh = model_input_size(gray.width, gray.height, min_pixels, max_pixels)
    full = gray.resize((mw, mh), Image.BICUBIC)
    sx, sy = mw / gray.width, mh / gray.height
    region = full.crop((round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)))
    return {name: np.asarray(im.convert("L"), dtype=np.float32) / 255.0 for name, im in (("crop", crop), ("full", region))}


def view_features(view: np.ndarray, aspect: float, side: int = 16, bins: int = 16) -> np.ndarray:
    """The classifier's input from one view: its pixels resampled to side x side, and, at the view's own
    resolution, its grey histogram and gradient-magnitude histogram (fine texture lives there), plus the
    box's log aspect ratio (width / height; the square resampling hides it)."""
    pixels = np.asarray(Image.fromarray(view).resize((side, side), Image.BILINEAR), dtype=np.float32)
    gy, gx = np.gradient(view)
    grad = np.hypot(gx, gy)
    hist = np.histogram(view, bins=bins, range=(0, 1))[0] / view.size
    ghist = np.histogram(grad, bins=bins, range=(0, 0.5))[0] / view.size
    return np.concatenate([pixels.ravel(), hist, ghist, [np.log(aspect)]])


def _cases(organ: str, attribute: str, n: int, seed: int, size: int, detail_scale: Optional[float] = None):
    for sample, image in generate_samples(organ, n, seed=seed, size=size, attributes=(attribute,), split="readability",
                                          detail_scale=detail_scale):
        yield sample.box, sample.meta["true_attributes"][attribute], image


def readability(organ: str, attribute: str, n_train: int = 300, n_test: int = 200, size: int = 256,
                min_pixels: int = 112 * 112, max_pixels: int = 224 * 224, crop_pixels: int = 112 * 112,
                side: int = 16, n_boot: int = 1000, seed: int = 0, detail_scale: Optional[float] = None,
                context: float = 0.0) -> dict:
    """Accuracy of the reference classifier from each view on fresh synthetic cases, with the paired difference.

    Labels are the generator's true classes (not the raters'), so the question is purely whether the
    pixels carry the attribute. `detail_scale` is the generator's (None: the same picture at any size;
    a number: fine structure fixed in pixels), `context` widens both views (:func:`lesion_views`).
    Returns {organ, attribute, size, detail_scale, context, n_train, n_test, crop, full,
    crop_minus_full (each (point, low, high)), majority}.
    """
    train = _cases(organ, attribute, n_train, readability_seed(organ, attribute, "train"), size, detail_scale)
    test = _cases(organ, attribute, n_test, readability_seed(organ, attribute, "test"), size, detail_scale)
    r = view_accuracy(train, test, min_pixels, max_pixels, crop_pixels, side, n_boot, seed, context)
    return dict(organ=organ, attribute=attribute, size=size, detail_scale=detail_scale, context=context, **r)


def view_accuracy(train, test, min_pixels: int, max_pixels: int, crop_pixels: int, side: int = 16,
                  n_boot: int = 1000, seed: int = 0, context: float = 0.0) -> dict:
    """Reference-classifier accuracy from each view: fit on `train`, score on `test`, both iterables of
    (box, label, image); returns {n_train, n_test, crop, full, crop_minus_full, majority}."""
    def table(cases):
        X, y = {v: [] for v in VIEWS}, []
        for box, label, image in cases:
            views = lesion_views(image, box, min_pixels, max_pixels, crop_pixels, context)
            for v in VIEWS:
                X[v].append(view_features(views[v], (box[2] - box[0]) / (box[3] - box[1]), side))
            y.append(label)
        return {v: np.stack(X[v]) for v in VIEWS}, np.array(y)

    Xtr, ytr = table(train)
    Xte, yte = table(test)
    return compare_views(Xtr, ytr, Xte, yte, [("crop", "full")], n_boot, seed)


def compare_views(Xtr: dict, ytr: np.ndarray, Xte: dict, yte: np.ndarray, pairs: Sequence[tuple[str, str]],
                  n_boot: int = 1000, seed: int = 0) -> dict:
    """The reference classifier on each view's features ({view: array}): fit on train, score on test.
    Returns {n_train, n_test, <view>, "<a>_minus_<b>" for each pair (each (point, low, high); paired
    bootstrap over test cases), majority}."""
    hits = {}
    for v in Xtr:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=5000))
        clf.fit(Xtr[v], ytr)
        hits[v] = (clf.predict(Xte[v]) == yte).astype(float)
    for a, b in pairs:
        hits[f"{a}_minus_{b}"] = hits[a] - hits[b]
    ci = M.bootstrap(lambda i: {k: float((h if i is None else h[i]).mean()) for k, h in hits.items()},
                     len(yte), n_boot, seed=seed)
    top = Counter(ytr.tolist()).most_common(1)[0][0]
    return dict(n_train=len(ytr), n_test=len(yte), **{k: list(v) for k, v in ci.items()},
                majority=float(np.mean(yte == top)))


def zoom_gain(box: Sequence[float], size: tuple[int, int], min_pixels: int, max_pixels: int,
              crop_pixels: int, context: float = 0.0) -> float:
    """How many times finer the zoom crop samples the lesion than the full view does (linear, geometric
    mean of the two axes): the crop cannot add pixels the original lacks, so the gain is capped by
    original / full-view size, and a crop budget below the full view's caps it by box side as well.

    >>> zoom_gain((0, 0, 44, 44), (256, 256), 112 * 112, 224 * 224, 112 * 112)      # 256 px original
    1.14
    >>> zoom_gain((0, 0, 174, 174), (1024, 1024), 112 * 112, 224 * 224, 112 * 112)  # the median lesion at 1024 px
    2.94
    """
    W, H = size
    if context:
        box = clean_box(box, size, pad_frac=context)[0]
    bw, bh = box[2] - box[0], box[3] - box[1]
    cw, ch = crop_output_size(max(1, math.ceil(bw)), max(1, math.ceil(bh)), crop_pixels,
                             min_pixels=min_pixels, max_pixels=max_pixels)
    mw, mh = model_input_size(W, H, min_pixels, max_pixels)
    crop_scale = math.sqrt(min(1.0, cw / bw) * min(1.0, ch / bh))        # crop pixels per original pixel
    return round(crop_scale / math.sqrt(mw / W * mh / H), 2)


def zoom_gain_summary(organ: str, n: int, size: int, pixel_bounds: dict, crop_pixels: int,
                      detail_scale: Optional[float] = None, seed: int = 0) -> dict:
    """Quantiles (10 %, median, 90 %) of :func:`zoom_gain` over the true boxes of `n` fresh cases of `organ`
    (the boxes only; images are drawn because the box comes from the drawn mask)."""
    gains = [zoom_gain(s.box, (size, size), pixel_bounds["min_pixels"], pixel_bounds["max_pixels"], crop_pixels)
             for s, _ in generate_samples(organ, n, seed=readability_seed(organ, "gain", str(seed)), size=size,
                                          split="gain", detail_scale=detail_scale)]
    q = np.percentile(gains, [10, 50, 90])
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def _fwhm(acf_1d: np.ndarray) -> float:
    """Full width at half maximum (pixels) of a symmetric autocorrelation profile sampled from lag 0."""
    below = np.flatnonzero(acf_1d < 0.5)
    if not len(below):
        return float("nan")
    k = int(below[0])
    a, b = acf_1d[k - 1], acf_1d[k]
    return 2.0 * (k - 1 + (a - 0.5) / (a - b))


def patch_grain(patch: np.ndarray) -> tuple[float, float]:
    """(axial, lateral) FWHM in pixels of the normalised autocorrelation of a mean-removed grey patch.

    >>> rng = np.random.default_rng(0)
    >>> white = rng.standard_normal((64, 64))
    >>> ax, lat = patch_grain(white)
    >>> bool(ax < 2.5 and lat < 2.5)
    True
    """
    x = patch.astype(np.float64) - patch.mean()
    f = np.fft.rfft2(x, s=(2 * x.shape[0], 2 * x.shape[1]))
    acf = np.fft.irfft2(np.abs(f) ** 2)[: x.shape[0], : x.shape[1]]
    if acf[0, 0] <= 0:
        return float("nan"), float("nan")
    acf /= acf[0, 0]
    return _fwhm(acf[:, 0]), _fwhm(acf[0, :])


def speckle_grain(gray: np.ndarray, box: Sequence[float], valid: Optional[np.ndarray] = None,
                  patch_frac: float = 0.12, n_patches: int = 6, seed: int = 0) -> Optional[dict]:
    """Median grain of up to `n_patches` square patches (side `patch_frac` x width) of one grey image
    that avoid the lesion box and lie inside `valid` (e.g. the fan) and have texture (grey std > 2).

    Returns {axial_px, lateral_px, axial_rel, lateral_rel, grey_mean, grey_std, width} or None when
    no patch qualifies.
    """
    h, w = gray.shape
    p = max(8, int(round(patch_frac * w)))
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = box
    rows = []
    for _ in range(200):
        if len(rows) >= n_patches or h <= p or w <= p:
            break
        i, j = int(rng.integers(0, h - p)), int(rng.integers(0, w - p))
        if not (j + p <= x1 or j >= x2 or i + p <= y1 or i >= y2):
            continue
        if valid is not None and not valid[i:i + p, j:j + p].all():
            continue
        patch = gray[i:i + p, j:j + p].astype(np.float64)
        if patch.std() < 2.0 or patch.mean() < 10:
            continue
        rows.append((*patch_grain(patch), patch.mean(), patch.std()))
    if not rows:
        return None
    a = np.nanmedian(np.array(rows), axis=0)
    return dict(axial_px=float(a[0]), lateral_px=float(a[1]), axial_rel=float(a[0] / w), lateral_rel=float(a[1] / w),
                grey_mean=float(a[2]), grey_std=float(a[3]), width=int(w))


def grain_summary(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Median over images of each grain statistic, with a 95 % bootstrap interval."""
    rows = [r for r in rows if r is not None]
    keys = ("axial_px", "lateral_px", "axial_rel", "lateral_rel", "grey_mean", "grey_std")
    arr = {k: np.array([r[k] for r in rows]) for k in keys}
    ci = M.bootstrap(lambda i: {k: float(np.nanmedian(v if i is None else v[i])) for k, v in arr.items()},
                     len(rows), n_boot, seed=seed)
    return dict(n=len(rows), **{k: list(v) for k, v in ci.items()})


def grain_row(summary: dict) -> dict:
    """One display row of a :func:`grain_summary`: 'median [low, high]' per statistic, 3 significant digits.

    >>> grain_row({"n": 2, "axial_rel": [0.0075, 0.0072, 0.008]})
    {'axial_rel': '0.0075 [0.0072, 0.008]', 'n': 2}
    """
    return {k: f"{v[0]:.3g} [{v[1]:.3g}, {v[2]:.3g}]" for k, v in summary.items() if k != "n"} | {"n": summary["n"]}


def synthetic_grain(organ: str, n: int, size: int = 256, seed: int = 0,
                    detail_scale: Optional[float] = None) -> list[dict]:
    """:func:`speckle_grain` of `n` fresh synthetic images of `organ` (fan-masked), for comparison with real ones."""
    rows = []
    for sample, image in generate_samples(organ, n, seed=readability_seed(organ, "grain", str(seed)), size=size,
                                          split="grain", detail_scale=detail_scale):
        gray = np.asarray(image.convert("L"))
        rows.append(speckle_grain(gray, sample.box, visible_region(gray), seed=seed))
    return rows


def visible_region(gray: np.ndarray) -> np.ndarray:
    """The scanned region of a B-mode image: non-black pixels, with isolated black speckle troughs inside it
    filled (a patch test on ``gray > 0`` alone rejects most patches of a large, finely speckled image).

    >>> g = np.full((20, 20), 90, np.uint8); g[:, :5] = 0; g[10, 12] = 0
    >>> v = visible_region(g)
    >>> bool(v[10, 12]), bool(v[10, 2]), int(v.sum())
    (True, False, 300)
    """
    return ndimage.binary_closing(gray > 0, structure=np.ones((3, 3)), iterations=2, border_value=1) & (
        ndimage.uniform_filter((gray > 0).astype(np.float32), 9) > 0.5)


def real_grain(items: Sequence[tuple], seed: int = 0) -> list[dict]:
    """:func:`speckle_grain` of real (sample, image) pairs, patches away from each sample's box."""
    return [speckle_grain(np.asarray(image.convert("L")), sample.box, None, seed=seed) for sample, image in items]

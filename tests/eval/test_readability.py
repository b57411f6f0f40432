"""Readability check and speckle grain: the reference classifier sees evidence only where it survives,
and the grain measure matches the closed form for Gaussian-filtered noise."""
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from zoomdx_lib.eval import readability as R


def _fine_texture_cases(n: int, seed: int):
    """1024 px images; the label is a 1-pixel checkerboard (1) or flat grey of the same mean (0) inside a
    ~120 px box: visible at native scale, averaged away at the 224 px full view."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((1024, 1024), 110, np.uint8)
        x, y = (int(v) for v in rng.integers(100, 800, 2))
        w = int(rng.integers(100, 140))
        label = i % 2
        patch = np.full((w, w), 110.0)
        if label:
            patch = np.where((np.add.outer(np.arange(w), np.arange(w)) % 2) == 0, 60.0, 160.0)
        img[y:y + w, x:x + w] = np.clip(patch + rng.normal(0, 3, (w, w)), 0, 255).astype(np.uint8)
        yield (x, y, x + w, y + w), label, Image.fromarray(img)


def test_fine_evidence_is_read_from_the_crop_and_not_from_the_full_view():
    r = R.view_accuracy(_fine_texture_cases(40, 0), _fine_texture_cases(40, 1), 112 * 112, 224 * 224,
                        112 * 112, n_boot=200)
    assert r["crop"][0] >= 0.95
    assert r["full"][0] <= 0.75
    assert r["crop_minus_full"][1] > 0          # the paired interval excludes 0


def test_same_pixels_give_no_zoom_advantage_on_synthetic_256px_cases():
    r = R.readability("breast", "echo", n_train=48, n_test=40, n_boot=200)
    lo, hi = r["crop_minus_full"][1:]
    assert lo <= 0 <= hi
    assert r["crop"][0] > r["majority"]        # echo is readable at all from the true box


@pytest.mark.parametrize("sigma", [1.5, 3.0])
def test_grain_width_matches_gaussian_filtered_noise(sigma):
    # white noise filtered by a Gaussian of sd s has a Gaussian autocorrelation of sd s*sqrt(2)
    noise = gaussian_filter(np.random.default_rng(0).standard_normal((256, 256)), sigma)
    ax, lat = R.patch_grain(noise)
    expected = 2 * np.sqrt(2 * np.log(2)) * sigma * np.sqrt(2)
    assert ax == pytest.approx(expected, rel=0.1) and lat == pytest.approx(expected, rel=0.1)


def test_grain_avoids_the_lesion_and_reports_relative_width():
    img = (gaussian_filter(np.random.default_rng(1).standard_normal((200, 300)), 2.0) * 40 + 100).clip(0, 255)
    row = R.speckle_grain(img, (0, 0, 150, 200), seed=0)
    assert row is not None and row["width"] == 300
    assert row["lateral_rel"] == pytest.approx(row["lateral_px"] / 300)
    assert R.speckle_grain(np.full((64, 64), 100.0), (0, 0, 5, 5)) is None   # no texture: no patch qualifies

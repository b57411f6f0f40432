"""tools/probe_zoom_evidence.py: its views, its polar reader and its output, at a tiny size."""
import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from zoomdx_lib.data import synth

_spec = importlib.util.spec_from_file_location("probe_zoom_evidence",
                                               Path(__file__).resolve().parents[1] / "tools" / "probe_zoom_evidence.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _disk(blur: float, size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    inside = (np.hypot(xx - size / 2, yy - size / 2) < size / 3).astype(np.float32)
    return 0.8 - 0.6 * (ndimage.gaussian_filter(inside, blur) if blur else inside)


def test_native_view_keeps_the_original_resolution():
    image = Image.fromarray((np.arange(512 * 512) % 253).astype(np.uint8).reshape(512, 512))
    v = probe.views_of(image, (100, 120, 300, 220), 112 * 112, 0.0)
    assert v["native"].shape == (100, 200)
    assert v["crop"].size < v["native"].size and v["full"].size < v["crop"].size


def test_polar_reader_sees_a_sharper_edge_as_steeper_and_narrower():
    # the disk fills 2/3 of the view: as a box widened by 25 % its edge sits at radius 1
    sharp, blurred = probe.polar_features(_disk(0), 0.25), probe.polar_features(_disk(4), 0.25)
    assert sharp[0] > 2 * blurred[0]          # median steepness
    assert sharp[3] < blurred[3]              # median edge width


def test_spicule_variant_is_confined_to_the_probe(capsys):
    original = synth._fine_margin
    probe.main(["--size", "512", "--n-train", "12", "--n-test", "10", "--readers", "histograms,polar",
                "--variant", "spicules", "--crop-pixels", str(56 * 56)])
    assert synth._fine_margin is original
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["reader"] for r in rows] == ["histograms", "polar"]
    for r in rows:
        assert r["variant"] == "spicules" and r["n_test"] == 10
        for key in ("crop", "native", "full"):
            point, low, high = r[key]
            assert 0.0 <= low <= point <= high <= 1.0
        # the paired difference's point estimate is the difference of the accuracies (each rounded to 3 places)
        assert abs(r["crop_minus_full"][0] - (r["crop"][0] - r["full"][0])) <= 2e-3


def test_spicule_variant_changes_the_margin_only():
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    blur, spikes = probe.spicule_margin(rng_a, 0.8, 50.0, 1.0)
    assert abs(blur - 1.0 / 50.0) < 1e-12 and 16 <= len(spikes) <= 40
    assert all(0.8 * 10 / 50 <= h <= 0.8 * 30 / 50 and 2 / 50 <= w <= 3 / 50 for _, h, w in spikes)
    assert probe.spicule_margin(rng_b, 0.8, 50.0, 1.0) == (blur, spikes)

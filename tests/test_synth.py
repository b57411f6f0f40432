"""Synthetic B-mode generator and the two simulated sonographers."""
import numpy as np
import pytest

from zoomdx_lib.schema import ATTRIBUTE_LABELS
from zoomdx_lib.synth import ORGAN_PRESETS, disagreement_curve, generate_case, generate_samples, simulate_raters


@pytest.mark.parametrize("organ", sorted(ORGAN_PRESETS))
def test_deterministic_per_seed_and_box_is_tight(organ):
    a, b, c = generate_case(3, organ), generate_case(3, organ), generate_case(4, organ)
    assert np.array_equal(a.image, b.image) and a.box == b.box and a.attributes == b.attributes
    assert not np.array_equal(a.image, c.image)
    ys, xs = np.nonzero(a.mask)
    assert a.box == (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    h, w = a.image.shape
    x1, y1, x2, y2 = a.box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    if organ == "liver":  # convex probe: the lesion lies inside the fan
        assert a.fov[a.mask].all() and not a.fov.all()


def test_forced_classes_come_out_as_asked():
    for attr, labels in ATTRIBUTE_LABELS.items():
        for lab in labels:
            assert generate_case(11, "breast", attribute_classes={attr: lab}).attributes[attr] == lab


def test_echogenicity_is_ordered_in_the_image():
    def contrast(label):
        vals = []
        for seed in range(4):
            case = generate_case(seed, "thyroid", attribute_classes={"echo": label})
            inside = case.image[case.mask].mean()
            x1, y1, x2, y2 = (int(v) for v in case.box)
            ring = np.zeros_like(case.mask)
            ring[max(0, y1 - 12):y2 + 12, max(0, x1 - 12):x2 + 12] = True
            ring &= ~case.mask
            vals.append(inside - case.image[ring].mean())
        return np.mean(vals)
    assert contrast("Anechoic") < contrast("Isoechoic") < contrast("Hyperechoic")
    assert contrast("Hypoechoic") < contrast("Hyperechoic")


def test_disagreement_rate_and_its_rise_with_difficulty():
    samples = [s for organ in ("liver", "breast") for s, _ in generate_samples(organ, 150, seed=5, size=128)]
    c0 = np.mean([s.c == 0 for s in samples])
    assert 0.15 <= c0 <= 0.4, c0
    d = np.array([s.difficulty for s in samples])
    c = np.array([s.c for s in samples])
    lo, hi = d <= np.quantile(d, 1 / 3), d >= np.quantile(d, 2 / 3)
    assert (1 - c[hi]).mean() > (1 - c[lo]).mean() + 0.1
    centres, p_c0, counts = disagreement_curve(samples, bins=5)
    assert counts.sum() == len(samples) and len(centres) == 5
    for s in samples:
        if s.c == 1:
            assert s.rater_labels[0] == s.rater_labels[1] == s.label
        else:
            assert s.rater_labels[0] != s.rater_labels[1]


def test_sample_i_does_not_depend_on_n():
    five = [s for s, _ in generate_samples("liver", 5, seed=2, size=96)]
    ten = [s for s, _ in generate_samples("liver", 10, seed=2, size=96)]
    assert [s.to_dict() for s in five] == [s.to_dict() for s in ten[:5]]


def test_raters_are_seeded():
    case = generate_case(8, "breast")
    assert simulate_raters(case, "echo", 1) == simulate_raters(case, "echo", 1)


def test_unknown_organ_is_named():
    with pytest.raises(ValueError, match="kidney"):
        generate_case(0, "kidney")

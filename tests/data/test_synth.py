"""Synthetic B-mode generator and the two simulated sonographers (fast: a few seconds)."""
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from zoomdx_lib.data.raters import disagreement_curve, simulate_raters
from zoomdx_lib.data.synth import ORGAN_PRESETS, generate_case, generate_samples
from zoomdx_lib.schema import ATTRIBUTE_LABELS


@pytest.mark.parametrize("organ", sorted(ORGAN_PRESETS))
def test_same_seed_same_case_other_seed_other_image(organ):
    a, b, c = generate_case(3, organ, 128), generate_case(3, organ, 128), generate_case(4, organ, 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.box == b.box and a.attributes == b.attributes and a.latent == b.latent
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.uint8 and a.image.shape == (128, 128)


@pytest.mark.parametrize("organ,size", [("liver", 96), ("liver", 256), ("breast", 128), ("thyroid", 224)])
def test_box_is_the_tight_box_of_the_mask_and_inside_the_visible_image(organ, size):
    for seed in range(6):
        case = generate_case(seed, organ, size)
        ys, xs = np.nonzero(case.mask)
        assert len(xs) > 0
        assert case.box == (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        x1, y1, x2, y2 = case.box
        assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
        assert 0.05 * size <= x2 - x1 <= 0.4 * size          # lesions of 12-35 % of the width, roughly
        if organ == "liver":                                   # convex probe: black outside the fan
            assert not case.fov.all() and (case.image[~case.fov] == 0).all()
            assert binary_erosion(case.fov)[case.mask].all()   # lesion strictly inside the fan
            assert case.image[case.mask].max() > 0


def test_forced_classes_come_out_as_asked():
    for organ in ORGAN_PRESETS:
        for attr, labels in ATTRIBUTE_LABELS.items():
            for i, lab in enumerate(labels):
                case = generate_case(11 + i, organ, 96, attribute_classes={attr: lab})
                assert case.attributes[attr] == lab


def test_echogenicity_is_ordered_in_the_image():
    def contrast(label):
        vals = []
        for organ in ORGAN_PRESETS:
            for seed in range(3):
                case = generate_case(seed, organ, 128, attribute_classes={"echo": label})
                x1, y1, x2, y2 = (int(v) for v in case.box)
                ring = np.zeros_like(case.mask)
                ring[max(0, y1 - 8):y2 + 8, max(0, x1 - 8):x2 + 8] = True
                ring &= ~case.mask & case.fov
                vals.append(case.image[case.mask].mean() - case.image[ring].mean())
        return np.mean(vals)
    an, hypo, iso, hyper = (contrast(lab) for lab in ATTRIBUTE_LABELS["echo"])
    assert an < hyper and hypo < hyper and an < iso < hyper
    assert an < -30 and hyper > 10


def test_disagreement_rate_rises_with_difficulty_and_the_label_rule():
    samples = [s for organ in ("liver", "breast", "thyroid") for s, _ in generate_samples(organ, 99, seed=5, size=64)]
    c = np.array([s.c for s in samples])
    assert 0.2 <= 1 - c.mean() <= 0.4, 1 - c.mean()
    d = np.array([s.difficulty for s in samples])
    assert ((0 <= d) & (d <= 1)).all()
    lo, hi = d <= np.quantile(d, 1 / 3), d >= np.quantile(d, 2 / 3)
    assert (1 - c[hi]).mean() > (1 - c[lo]).mean() + 0.15
    centres, p_c0, counts = disagreement_curve(samples, bins=5)
    assert counts.sum() == len(samples) and len(centres) == len(p_c0) == 5
    for s in samples:
        s.validate()
        assert s.question == "" and s.image_size == (64, 64) and s.image_path == f"images/{s.id}.png"
        if s.c == 1:
            assert s.rater_labels[0] == s.rater_labels[1] == s.label
        else:
            assert s.rater_labels[0] != s.rater_labels[1]
            assert s.label == s.meta["true_attributes"][s.attribute]   # documented rule for c = 0
    for attr, labels in ATTRIBUTE_LABELS.items():                        # balanced attributes and classes
        asked = [s for s in samples if s.attribute == attr]
        assert len(asked) == 99
        true = [s.meta["true_attributes"][attr] for s in asked]
        assert min(true.count(lab) for lab in labels) >= len(asked) // len(labels) - 1


def test_sample_i_does_not_depend_on_n():
    five = list(generate_samples("liver", 5, seed=2, size=64, split="train"))
    ten = list(generate_samples("liver", 10, seed=2, size=64, split="train"))
    assert [s.to_dict() for s, _ in five] == [s.to_dict() for s, _ in ten[:5]]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(five, ten))
    assert five[0][0].id == "liver-train-00000" and five[0][1].mode == "L"


def test_raters_are_seeded_and_accept_a_generator():
    case = generate_case(8, "breast", 64)
    assert simulate_raters(case, "echo", 1) == simulate_raters(case, "echo", np.random.default_rng(1))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="kidney"):
        generate_case(0, "kidney")
    with pytest.raises(ValueError, match="colour"):
        generate_case(0, "liver", attribute_classes={"colour": "red"})
    with pytest.raises(ValueError, match="Spiky"):
        generate_case(0, "liver", attribute_classes={"shape": "Spiky"})
    with pytest.raises(ValueError, match="colour"):
        next(generate_samples("liver", 1, 0, attributes=("colour",)))
    with pytest.raises(ValueError, match="colour"):
        simulate_raters(generate_case(0, "liver", 64), "colour", 0)


def _grain_px(organ, size, detail_scale, n=6):
    from zoomdx_lib.eval.readability import speckle_grain
    rows = [speckle_grain(c.image.astype(float), c.box, c.fov) for c in
            (generate_case(40 + i, organ, size, detail_scale=detail_scale) for i in range(n))]
    return np.nanmedian([[r["axial_px"], r["lateral_px"]] for r in rows if r], axis=0)


def test_detail_scale_fixes_the_speckle_grain_in_pixels_while_the_default_scales_it_with_the_image():
    g256 = _grain_px("breast", 256, None)
    g512 = _grain_px("breast", 512, None)            # same picture, twice the pixels: grain twice as wide
    native = _grain_px("breast", 512, 1.0)           # fine structure fixed at its 256 px size
    assert np.allclose(g512 / g256, 2.0, rtol=0.3), (g256, g512)
    assert np.allclose(native / g256, 1.0, rtol=0.3), (g256, native)


def test_native_margin_is_fine_structure_a_tight_box_and_deterministic():
    def boundary(mask):      # mask pixels with a 4-neighbour outside
        inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        return mask.sum() - inner.sum()
    longer = 0
    for seed in range(6):
        sharp = generate_case(seed, "breast", 768, {"margin": "Circumscribed"}, detail_scale=1.0)
        spiky = generate_case(seed, "breast", 768, {"margin": "Not circumscribed"}, detail_scale=1.0)
        again = generate_case(seed, "breast", 768, {"margin": "Not circumscribed"}, detail_scale=1.0)
        assert np.array_equal(spiky.image, again.image) and spiky.box == again.box
        for c in (sharp, spiky):
            rows, cols = np.flatnonzero(c.mask.any(1)), np.flatnonzero(c.mask.any(0))
            assert c.box == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        # same seed, same lesion outline and size; spicules of a few pixels lengthen the boundary
        assert abs(spiky.mask.sum() / sharp.mask.sum() - 1) < 0.1
        longer += boundary(spiky.mask) > 1.1 * boundary(sharp.mask)
    assert longer >= 5


@pytest.mark.parametrize("bad", [0, -1.0, 100.0, "1"])
def test_bad_detail_scale_is_refused(bad):
    with pytest.raises(ValueError, match="detail_scale"):
        generate_case(0, "liver", 128, detail_scale=bad)

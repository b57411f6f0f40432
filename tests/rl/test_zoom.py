"""Tests of the zoom tool: tool-call parsing, box clean-up, frame conversion, deterministic crops."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zoomdx_lib.geometry import box_to_model, box_to_original, model_input_size
from zoomdx_lib.geometry import crop_image, crop_output_size
from zoomdx_lib.protocol import TOOL_CALL_RE, ToolCall, format_tool_call, parse_tool_call
from zoomdx_lib.rl.zoom import zoom

MODEL = (252, 168)      # model-input (width, height) pixels
ORIG = (640, 480)       # original (width, height) pixels; non-square, different scale per axis


def call(body: str) -> str:
    return f"<think>look at the lesion</think>\n<tool_call>{body}</tool_call>"


def parse(body: str, **kw) -> ToolCall:
    return parse_tool_call(call(body), MODEL, ORIG, **kw)


def random_image(size=ORIG, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


# --------------------------------------------------------------------------- valid calls

@pytest.mark.parametrize("box", [(10, 20, 110, 100), (0, 0, 252, 168), (200, 100, 252, 168), (3, 5, 31, 33)])
def test_format_parse_round_trip(box):
    text = format_tool_call(box)
    assert text == '<tool_call>{"bbox_2d": [%d, %d, %d, %d]}</tool_call>' % box
    tc = parse_tool_call("<think>x</think>" + text, MODEL, ORIG)
    assert tc.ok and tc.error is None
    assert tc.box_model == tuple(float(v) for v in box)
    assert tc.raw == '{"bbox_2d": [%d, %d, %d, %d]}' % box


def test_paper_spacing_and_no_space_json():
    tc = parse_tool_call('<tool_call> {"bbox_2d":[10,20,110,100]} </tool_call>', MODEL, ORIG)
    assert tc.ok and tc.box_model == (10.0, 20.0, 110.0, 100.0)


def test_floats_and_extra_keys_accepted():
    tc = parse('{"bbox_2d": [10.5, 20.25, 110.75, 100.0], "label": "lesion"}')
    assert tc.ok and tc.box_model == (10.5, 20.25, 110.75, 100.0)


def test_hermes_style_arguments_wrapper():
    tc = parse('{"name": "zoom_in", "arguments": {"bbox_2d": [10, 20, 110, 100]}}')
    assert tc.ok and tc.box_model == (10.0, 20.0, 110.0, 100.0)


def test_first_tool_call_is_used():
    text = call('{"bbox_2d": [10, 20, 110, 100]}') + call('{"bbox_2d": [0, 0, 50, 50]}')
    assert parse_tool_call(text, MODEL, ORIG).box_model == (10.0, 20.0, 110.0, 100.0)
    text = call('oops') + call('{"bbox_2d": [0, 0, 50, 50]}')
    assert parse_tool_call(text, MODEL, ORIG).error == "bad_json"
    assert TOOL_CALL_RE.search(text).group(1) == "oops"


# --------------------------------------------------------------------------- failure modes

@pytest.mark.parametrize("text,error", [
    ("<think>no call</think><answer>{}</answer>", "no_tool_call"),
    ("", "no_tool_call"),
    ('<tool_call>{"bbox_2d": [1, 2, 3, 4]}', "unclosed_tool_call"),
    (call('{"bbox_2d": [1, 2, 3, 4]'), "bad_json"),
    (call("bbox_2d: [1, 2, 3, 4]"), "bad_json"),
    (call(""), "bad_json"),
    (call("{'bbox_2d': [1, 2, 3, 4]}"), "bad_json"),
    (call("[1, 2, 3, 4]"), "not_object"),
    (call('{"bbox": [1, 2, 3, 4]}'), "missing_bbox_2d"),
    (call('{"box_2d": [1, 2, 3, 4]}'), "missing_bbox_2d"),
    (call('{"bbox_2d": "1, 2, 3, 4"}'), "not_list"),
    (call('{"bbox_2d": {"x1": 1}}'), "not_list"),
    (call('{"bbox_2d": [10, 20, 110]}'), "wrong_length"),
    (call('{"bbox_2d": [10, 20, 110, 100, 5]}'), "wrong_length"),
    (call('{"bbox_2d": []}'), "wrong_length"),
    (call('{"bbox_2d": [NaN, 20, 110, 100]}'), "not_finite"),
    (call('{"bbox_2d": [10, Infinity, 110, 100]}'), "not_finite"),
    (call('{"bbox_2d": [10, 20, -Infinity, 100]}'), "not_finite"),
    (call('{"bbox_2d": [10, 20, 1e999, 100]}'), "not_finite"),
    (call('{"bbox_2d": [10, 20, %s, 100]}' % ("9" * 400)), "not_finite"),
    (call('{"bbox_2d": ["10", 20, 110, 100]}'), "not_number"),
    (call('{"bbox_2d": [true, 20, 110, 100]}'), "not_number"),
    (call('{"bbox_2d": [10, false, 110, 100]}'), "not_number"),
    (call('{"bbox_2d": [10, null, 110, 100]}'), "not_number"),
    (call('{"bbox_2d": [[10], 20, 110, 100]}'), "not_number"),
    (call('{"bbox_2d": [10, 20, 10, 100]}'), "zero_area"),
    (call('{"bbox_2d": [10, 50, 110, 50]}'), "zero_area"),
    (call('{"bbox_2d": [300, 20, 400, 100]}'), "outside_image"),
    (call('{"bbox_2d": [-50, 20, -10, 100]}'), "outside_image"),
    (call('{"bbox_2d": [10, 168, 110, 300]}'), "outside_image"),
    (call('{"bbox_2d": [252, 0, 260, 10]}'), "outside_image"),
    (call('{"bbox_2d": [-1e300, -1e300, 0, 0]}'), "outside_image"),
])
def test_failure_modes(text, error):
    tc = parse_tool_call(text, MODEL, ORIG)
    assert not tc.ok
    assert tc.error == error
    assert tc.box_model is None and tc.box_original is None


def test_non_string_and_huge_inputs_do_not_raise():
    assert parse_tool_call(None, MODEL, ORIG).error == "not_text"
    assert parse_tool_call(b"<tool_call>", MODEL, ORIG).error == "not_text"
    deep = call("[" * 100_000 + "]" * 100_000)
    assert parse_tool_call(deep, MODEL, ORIG).error in ("bad_json", "not_object")
    many_digits = call('{"bbox_2d": [%s, 1, 2, 3]}' % ("1" * 10_000))
    assert parse_tool_call(many_digits, MODEL, ORIG).error == "bad_json"  # int-digit limit of json


def test_bad_sizes_are_programming_errors():
    with pytest.raises(ValueError, match="model_size"):
        parse_tool_call(call('{"bbox_2d": [1, 2, 3, 4]}'), (0, 168), ORIG)
    with pytest.raises(ValueError, match="original_size"):
        parse_tool_call(call('{"bbox_2d": [1, 2, 3, 4]}'), MODEL, (640,))
    with pytest.raises(ValueError, match="pad_frac"):
        parse_tool_call("", MODEL, ORIG, pad_frac=-0.1)


# --------------------------------------------------------------------------- box clean-up

def test_corner_ordering():
    tc = parse('{"bbox_2d": [110, 100, 10, 20]}')
    assert tc.ok and tc.box_model == (10.0, 20.0, 110.0, 100.0)
    tc = parse('{"bbox_2d": [10, 100, 110, 20]}')
    assert tc.box_model == (10.0, 20.0, 110.0, 100.0)


def test_clamping_to_model_image():
    tc = parse('{"bbox_2d": [-40, -10, 400, 100]}')
    assert tc.ok and tc.box_model == (0.0, 0.0, 252.0, 100.0)
    tc = parse('{"bbox_2d": [200, 150, 1e300, 1e300]}')
    assert tc.ok and tc.box_model == (200.0, 140.0, 252.0, 168.0)  # clamped, then min side 28


def test_min_side_enlargement_centred():
    tc = parse('{"bbox_2d": [100, 80, 110, 90]}')           # 10x10 box, centre (105, 85)
    assert tc.ok and tc.box_model == (91.0, 71.0, 119.0, 99.0)
    tc = parse('{"bbox_2d": [100, 80, 110, 90]}', min_side=56)
    assert tc.box_model == (77.0, 57.0, 133.0, 113.0)
    tc = parse('{"bbox_2d": [100, 80, 110, 90]}', min_side=0)
    assert tc.box_model == (100.0, 80.0, 110.0, 90.0)


def test_min_side_enlargement_shifted_inside():
    tc = parse('{"bbox_2d": [0, 0, 4, 4]}')
    assert tc.box_model == (0.0, 0.0, 28.0, 28.0)
    tc = parse('{"bbox_2d": [250, 160, 252, 168]}')
    assert tc.box_model == (224.0, 140.0, 252.0, 168.0)
    tc = parse('{"bbox_2d": [10, 10, 20, 20]}', min_side=500)  # larger than the image: whole image
    assert tc.box_model == (0.0, 0.0, 252.0, 168.0)


def test_context_padding():
    tc = parse('{"bbox_2d": [100, 60, 140, 100]}', pad_frac=0.25)  # 40x40 -> +10 each side
    assert tc.box_model == (90.0, 50.0, 150.0, 110.0)
    tc = parse('{"bbox_2d": [0, 0, 40, 40]}', pad_frac=0.25)       # padding clamped at the border
    assert tc.box_model == (0.0, 0.0, 50.0, 50.0)


# --------------------------------------------------------------------------- frames

def test_model_to_original_conversion_non_square():
    tc = parse('{"bbox_2d": [63, 42, 126, 84]}')
    sx, sy = ORIG[0] / MODEL[0], ORIG[1] / MODEL[1]
    assert tc.box_original == pytest.approx((63 * sx, 42 * sy, 126 * sx, 84 * sy))
    assert tc.box_original == pytest.approx(box_to_original(tc.box_model, ORIG, MODEL))
    assert box_to_model(tc.box_original, ORIG, MODEL) == pytest.approx(tc.box_model)
    full = parse('{"bbox_2d": [0, 0, 252, 168]}')
    assert full.box_original == pytest.approx((0.0, 0.0, 640.0, 480.0))
    assert 0 <= full.box_original[0] and full.box_original[2] <= 640 and full.box_original[3] <= 480


def test_ground_truth_box_round_trip_through_model_frame():
    # a box annotated in original pixels, written by the dialogue builder, parsed back
    model_size = model_input_size(640, 480, 112 * 112, 224 * 224)
    gt = (160.0, 120.0, 480.0, 360.0)
    text = format_tool_call(box_to_model(gt, ORIG, model_size))
    tc = parse_tool_call(text, model_size, ORIG)
    assert tc.ok
    tol = max(ORIG[0] / model_size[0], ORIG[1] / model_size[1])  # rounding to model pixels
    assert all(abs(a - b) <= tol for a, b in zip(tc.box_original, gt))


# --------------------------------------------------------------------------- crops

@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("box", [(100.4, 50.6, 300.2, 210.9), (0, 0, 640, 480), (600.5, 470.1, 640, 480)])
def test_crop_matches_pil(box, mode):
    img = random_image(mode=mode)
    out = crop_image(img, box, 112 * 112)
    ib = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    ref = img.crop(ib).convert("RGB").resize(out.size, Image.BICUBIC)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_crop_is_deterministic_and_clamped():
    img = random_image()
    a = crop_image(img, (-10, -5, 100, 90), 112 * 112)
    b = crop_image(img, (0, 0, 100, 90), 112 * 112)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="empty"):
        crop_image(img, (700, 10, 800, 50), 112 * 112)


@pytest.mark.parametrize("target", [56 * 56, 112 * 112, 224 * 224])
@pytest.mark.parametrize("wh", [(100, 100), (320, 240), (50, 200), (37, 29), (600, 90)])
def test_crop_size_multiples_of_28_and_area_near_target(wh, target):
    img = random_image()
    out = crop_image(img, (10, 10, 10 + wh[0], 10 + wh[1]), target)
    w, h = out.size
    assert w % 28 == 0 and h % 28 == 0 and w >= 28 and h >= 28
    # each side is within half a grid step of the exact aspect-preserving size
    s = math.sqrt(target / (wh[0] * wh[1]))
    assert abs(w - max(28, wh[0] * s)) <= 14 + 1e-9 or w == 28
    assert abs(h - max(28, wh[1] * s)) <= 14 + 1e-9 or h == 28
    if min(wh[0], wh[1]) * s >= 56:  # not pinned at the 28 floor: area close to the target
        assert abs(w * h - target) / target <= 0.35


def test_crop_output_size_respects_processor_bounds():
    lo, hi = 112 * 112, 224 * 224
    for wh in [(100, 130), (131, 100), (50, 200), (2000, 30), (30, 30), (640, 480)]:
        for target in (lo, hi, 150 * 150):
            w, h = crop_output_size(*wh, target, min_pixels=lo, max_pixels=hi)
            assert w % 28 == 0 and h % 28 == 0
            assert lo <= w * h <= hi, (wh, target, w, h)
            # the processor keeps a crop inside its bounds as it is
            assert model_input_size(w, h, lo, hi) == (w, h)


def test_zoom_end_to_end():
    img = random_image()
    tc, crop = zoom(call('{"bbox_2d": [63, 42, 126, 84]}'), img, MODEL, 112 * 112)
    # original crop 160x120 -> scale sqrt(12544 / 19200): 129.3 x 97.0 -> nearest multiples of 28
    assert tc.ok and crop is not None and crop.size == (140, 84)
    ref = crop_image(img, tc.box_original, 112 * 112)
    assert np.array_equal(np.asarray(crop), np.asarray(ref))
    tc, crop = zoom("no call here", img, MODEL, 112 * 112)
    assert not tc.ok and crop is None and tc.error == "no_tool_call"


# --------------------------------------------------------------------------- fuzz

_json_scalars = st.one_of(
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
    st.integers(min_value=-300, max_value=600),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-50, max_value=400),
    st.booleans(), st.none(), st.text(max_size=5),
)
_json_values = st.recursive(_json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=3)), max_leaves=12)


def _num_text(v) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return json.dumps(v)


@st.composite
def near_valid_calls(draw) -> str:
    n = draw(st.sampled_from([4, 4, 4, 4, 3, 5, 0]))
    plain = st.one_of(st.integers(min_value=-300, max_value=600), st.floats(min_value=-300, max_value=600))
    odd = st.one_of(_json_values, st.integers(min_value=-(10 ** 400), max_value=10 ** 400))
    values = draw(st.lists(plain, min_size=n, max_size=n) if draw(st.booleans())
                  else st.lists(st.one_of(plain, odd), min_size=n, max_size=n))
    key = draw(st.sampled_from(["bbox_2d", "bbox_2d", "bbox_2d", "bbox", "BBOX_2D"]))
    body = "{" + json.dumps(key) + ": [" + ", ".join(_num_text(v) if not isinstance(v, (list, dict))
                                                      else json.dumps(v) for v in values) + "]}"
    body = draw(st.sampled_from(["{b}", "{b}", " {b} ", "{b}\n", "{b}}", "{{{b}"])).replace("{b}", body)
    pre = draw(st.text(max_size=20))
    post = draw(st.sampled_from(["", "</tool_call>"]))
    return pre + "<tool_call>" + body + "</tool_call>" + post + draw(st.text(max_size=10))


_sizes = st.tuples(st.integers(1, 40).map(lambda k: 28 * k), st.integers(1, 40).map(lambda k: 28 * k))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), near_valid_calls()), model_size=_sizes,
       original_size=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
       min_side=st.sampled_from([0.0, 28.0, 56.0, 31.7]), pad_frac=st.sampled_from([0.0, 0.1, 0.5]))
def test_fuzz_never_raises_and_ok_boxes_are_valid(text, model_size, original_size, min_side, pad_frac):
    tc = parse_tool_call(text, model_size, original_size, min_side=min_side, pad_frac=pad_frac)
    assert isinstance(tc, ToolCall)
    if not tc.ok:
        assert isinstance(tc.error, str) and tc.box_model is None and tc.box_original is None
        return
    W, H = model_size
    x1, y1, x2, y2 = tc.box_model
    assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    assert x2 - x1 >= min(min_side, W) - 1e-9 and y2 - y1 >= min(min_side, H) - 1e-9
    ow, oh = original_size
    ox1, oy1, ox2, oy2 = tc.box_original
    assert 0 <= ox1 < ox2 <= ow and 0 <= oy1 < oy2 <= oh


_coord = st.one_of(st.integers(min_value=-400, max_value=1200), st.floats(min_value=-400, max_value=1200),
                   st.floats(min_value=-1e300, max_value=1e300))


@settings(max_examples=200, deadline=None)
@given(box=st.tuples(_coord, _coord, _coord, _coord), model_size=_sizes,
       original_size=st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
       min_side=st.sampled_from([0.0, 28.0, 56.0, 31.7]), pad_frac=st.sampled_from([0.0, 0.1, 0.5]))
def test_fuzz_box_cleanup_well_formed_json(box, model_size, original_size, min_side, pad_frac):
    text = "<tool_call>" + json.dumps({"bbox_2d": list(box)}) + "</tool_call>"
    tc = parse_tool_call(text, model_size, original_size, min_side=min_side, pad_frac=pad_frac)
    W, H = model_size
    x1, x2 = sorted(box[0::2])
    y1, y2 = sorted(box[1::2])
    expect_ok = x1 < x2 and y1 < y2 and x2 > 0 and y2 > 0 and x1 < W and y1 < H
    assert tc.ok == expect_ok, (tc, box)
    if tc.ok:
        bx1, by1, bx2, by2 = tc.box_model
        assert 0 <= bx1 < bx2 <= W and 0 <= by1 < by2 <= H
        assert bx2 - bx1 >= min(min_side, W) - 1e-9 and by2 - by1 >= min(min_side, H) - 1e-9
        # the cleaned box still covers the clamped prediction
        assert bx1 <= max(x1, 0) + 1e-9 and by1 <= max(y1, 0) + 1e-9
        assert bx2 >= min(x2, W) - 1e-9 and by2 >= min(y2, H) - 1e-9
    else:
        assert tc.error in ("zero_area", "outside_image")


def test_iou_matches_torchvision_box_iou():
    """geometry.iou against torchvision's reference on random boxes, degenerate ones included."""
    import torch
    from torchvision.ops import box_iou

    from zoomdx_lib.geometry import iou as geometry_iou
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 300, (200, 4))
    b = rng.uniform(0, 300, (200, 4))
    a[:, 2:] = a[:, :2] + rng.uniform(0, 120, (200, 2))
    b[:, 2:] = b[:, :2] + rng.uniform(0, 120, (200, 2))
    b[:10] = a[:10]                        # identical boxes
    b[10:20, 2:] = b[10:20, :2] + 1e-3     # near-empty boxes
    ref = box_iou(torch.tensor(a), torch.tensor(b)).diagonal().numpy()
    ours = np.array([geometry_iou(x, y) for x, y in zip(a, b)])
    np.testing.assert_allclose(ours, ref, atol=1e-9)

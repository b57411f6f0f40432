"""Hostile model outputs: >= 10^5 generated texts through tool-call parsing, cropping and answer
extraction, with zero exceptions.

Each hypothesis example draws a batch of outputs (random bytes, truncated and nested tags, huge
numbers, unicode digits, JSON with extra keys, ...) and pushes every one through the same path a
rollout takes: `zoom` (parse + crop of the original image) on it as a turn-1 text, and
`extract_answer` on it as a turn-2 text for every attribute. The total is counted and checked.
`ZOOMDX_FUZZ_OUTPUTS` sets the total (default 100 000).
"""
from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zoomdx_lib.protocol import Answer, ToolCall, extract_answer
from zoomdx_lib.rl.zoom import zoom
from zoomdx_lib.schema import ATTRIBUTE_LABELS

TOTAL = int(os.environ.get("ZOOMDX_FUZZ_OUTPUTS", "100000"))
PER_EXAMPLE = 50
EXAMPLES = -(-TOTAL // PER_EXAMPLE)

UNICODE_DIGITS = "٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२३४५६७८९０１２３４５６７８９𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗¹²³⁴½"
TAGS = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<think>", "</think>", "<|im_end|>",
        "<|image_pad|>", "<tool_call", "</tool_", "<answer", "</ans"]
LABELS = [lab for labs in ATTRIBUTE_LABELS.values() for lab in labs]

huge_numbers = st.one_of(
    st.integers(min_value=-(10 ** 500), max_value=10 ** 500).map(str),
    st.sampled_from(["1e308", "1e309", "-1e999", "NaN", "Infinity", "-Infinity", "nan", "0x1F", "1_000",
                     "00012", "+5", "5.", ".5", "1e-400", "9" * 5000]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
unicode_numbers = st.text(alphabet=UNICODE_DIGITS + "0123456789.-", min_size=1, max_size=8)
plain_numbers = st.one_of(st.integers(-50, 300).map(str), st.floats(-50, 300).map(lambda v: f"{v:.1f}"))
numbers = st.one_of(plain_numbers, plain_numbers, plain_numbers, huge_numbers, unicode_numbers)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                                     st.sampled_from(LABELS)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=8)


@st.composite
def tool_call_bodies(draw) -> str:
    n = draw(st.sampled_from([0, 2, 3, 4, 4, 4, 5, 8]))
    nums = ", ".join(draw(st.lists(plain_numbers if draw(st.booleans()) else numbers, min_size=n, max_size=n)))
    key = draw(st.sampled_from(["bbox_2d"] * 5 + ["bbox", "box_2d", "BBOX_2D", "bbox_2d "]))
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    extra_text = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in extra.items())
    body = "{" + json.dumps(key) + ": [" + nums + "]" + extra_text + "}"
    wrap = draw(st.sampled_from(["{b}", "{b}", "{b}", '{"name": "zoom_in", "arguments": {b}}', "[{b}]", "{b}}", "{{b}",
                                 '"{b}"', "{b},{b}"]))
    return wrap.replace("{b}", body)


@st.composite
def answer_bodies(draw) -> str:
    key = draw(st.sampled_from(list(ATTRIBUTE_LABELS) + ["answer", "ECHO", "", "echo "]))
    value = draw(st.one_of(st.sampled_from(LABELS), st.sampled_from(LABELS).map(str.upper),
                           st.sampled_from(LABELS).map(lambda s: s.replace(" ", "-")), json_values))
    extra = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2))
    return json.dumps({key: value, **extra})


@st.composite
def model_outputs(draw) -> str:
    kind = draw(st.integers(0, 8))
    if kind == 7:  # a well-formed call with odd spacing, floats or extra keys: should crop
        box = draw(st.lists(plain_numbers, min_size=4, max_size=4))
        extra = draw(st.sampled_from(["", ', "label": "lesion"', ', "note": [1, {"a": null}]']))
        sep = draw(st.sampled_from([", ", ",", " ,\n"]))
        return f'<think>{draw(st.text(max_size=15))}</think><tool_call>{{"bbox_2d": [{sep.join(box)}]{extra}}}</tool_call>'
    if kind == 8:  # a well-formed answer with case, hyphen and synonym variants
        return f"<think>{draw(st.text(max_size=15))}</think><answer>{draw(answer_bodies())}</answer>"
    if kind == 0:  # random bytes, decoded the way a tokenizer would hand them back
        return draw(st.binary(max_size=300)).decode("utf-8", errors=draw(st.sampled_from(["replace", "ignore"])))
    if kind == 1:  # arbitrary unicode
        return draw(st.text(max_size=300))
    if kind == 2:  # soup of tags and fragments
        parts = draw(st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=10), numbers,
                                        tool_call_bodies(), answer_bodies()), max_size=12))
        return "".join(parts)
    body = draw(tool_call_bodies()) if kind in (3, 4) else draw(answer_bodies())
    open_tag, close_tag = ("<tool_call>", "</tool_call>") if kind in (3, 4) else ("<answer>", "</answer>")
    text = open_tag + body + close_tag
    if draw(st.booleans()):  # nested tags
        text = open_tag + draw(st.sampled_from(["", "x", open_tag])) + text + draw(st.sampled_from(["", close_tag]))
    if draw(st.booleans()):  # truncated, as at max_new_tokens
        text = text[:draw(st.integers(0, len(text)))]
    return draw(st.text(max_size=20)) + "<think>" + draw(st.text(max_size=20)) + "</think>" + text


IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (97, 131), dtype=np.uint8))
COUNT = {"outputs": 0, "ok_calls": 0, "crops": 0, "valid_answers": 0}


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(outputs=st.lists(model_outputs(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE),
       model_size=st.sampled_from([(112, 84), (224, 168), (56, 56), (28, 280)]),
       pad_frac=st.sampled_from([0.0, 0.1]))
def test_hostile_outputs_parse_crop_and_extract_without_exceptions(outputs, model_size, pad_frac):
    for text in outputs:
        call, crop = zoom(text, IMAGE, model_size, target_pixels=56 * 56, pad_frac=pad_frac,
                          min_pixels=28 * 28, max_pixels=112 * 112)
        assert isinstance(call, ToolCall)
        assert (crop is not None) == call.ok, (text, call)
        if call.ok:
            x1, y1, x2, y2 = call.box_original
            assert 0 <= x1 < x2 <= IMAGE.width and 0 <= y1 < y2 <= IMAGE.height
            assert crop.mode == "RGB" and crop.width % 28 == 0 and crop.height % 28 == 0
            COUNT["ok_calls"] += 1
            COUNT["crops"] += 1
        else:
            assert isinstance(call.error, str) and call.error
        for attribute in ATTRIBUTE_LABELS:
            ans = extract_answer(text, attribute)
            assert isinstance(ans, Answer)
            assert ans.label in ATTRIBUTE_LABELS[attribute] if ans.valid else ans.label is None
            COUNT["valid_answers"] += ans.valid
        COUNT["outputs"] += 1


def test_hostile_outputs_count():
    """Runs after the fuzz test in file order: the total really pushed through, and some of it valid."""
    if COUNT["outputs"] == 0:  # the fuzz test was deselected
        test_hostile_outputs_parse_crop_and_extract_without_exceptions()
    print(f"\nhostile outputs: {COUNT}")
    assert COUNT["outputs"] >= TOTAL
    # the generator reaches the valid paths too, so the crop and the label normalisation are exercised
    assert COUNT["crops"] > TOTAL // 100 and COUNT["valid_answers"] > TOTAL // 100

"""Tests of judge-free answer extraction and label normalisation."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoomdx_lib.protocol import INVALID, Answer, extract_answer, format_answer, normalise_label
from zoomdx_lib.schema import ATTRIBUTE_LABELS

SYNONYMS = {
    "echo": {
        "Anechoic": ["anechoic", "ANECHOIC", "an-echoic", "An_echoic", "cystic", " Anechoic. "],
        "Hypoechoic": ["hypoechoic", "hypo-echoic", "hypo echoic", "Hypo_Echoic", "hypoechogenic",
                       "low echo", "Low-Echo", "HYPOECHOIC", "markedly hypoechoic"],
        "Isoechoic": ["isoechoic", "iso-echoic", "iso echoic", "isoechogenic", "Isoechoic"],
        "Hyperechoic": ["hyperechoic", "hyper-echoic", "hyperechogenic", "high echo", "High  Echo"],
    },
    "shape": {
        "Oval": ["oval", "OVAL", "ellipse", "elliptical", "ovoid"],
        "Round": ["round", "Round", "circular", "rounded"],
        "Irregular": ["irregular", "IRREGULAR", " irregular "],
    },
    "margin": {
        "Circumscribed": ["circumscribed", "Circumscribed", "well-defined", "well defined", "smooth"],
        "Not circumscribed": ["Not circumscribed", "not circumscribed", "not-circumscribed", "NOT_CIRCUMSCRIBED",
                              "non-circumscribed", "noncircumscribed", "uncircumscribed", "ill-defined",
                              "ill defined", "indistinct", "spiculated", "microlobulated", "angular"],
    },
}


def test_synonym_table_covers_every_label():
    for attr, labels in ATTRIBUTE_LABELS.items():
        assert set(SYNONYMS[attr]) == set(labels)


@pytest.mark.parametrize("attr,label", [(a, l) for a, ls in ATTRIBUTE_LABELS.items() for l in ls])
def test_canonical_labels_round_trip(attr, label):
    assert normalise_label(label, attr) == label
    text = "<think>fine</think>" + format_answer(attr, label)
    ans = extract_answer(text, attr)
    assert ans == Answer(label=label, valid=True, error=None, raw=json.dumps({attr: label}))
    assert ans.vote == label


@pytest.mark.parametrize("attr,label,value", [(a, l, v) for a, d in SYNONYMS.items()
                                              for l, vs in d.items() for v in vs])
def test_synonyms_normalise(attr, label, value):
    assert normalise_label(value, attr) == label
    ans = extract_answer("<answer>" + json.dumps({attr: value}) + "</answer>", attr)
    assert ans.valid and ans.label == label


def test_labels_do_not_leak_across_attributes():
    assert normalise_label("Oval", "echo") is None
    assert normalise_label("Hypoechoic", "margin") is None
    assert normalise_label("irregular", "margin") is None
    assert normalise_label("circumscribed", "shape") is None
    assert normalise_label(3, "echo") is None
    assert normalise_label(None, "echo") is None


@pytest.mark.parametrize("value, attr, label", [
    ("Not circumscribed - indistinct", "margin", "Not circumscribed"),
    ("not circumscribed - angular, microlobulated", "margin", "Not circumscribed"),
    ("NOT CIRCUMSCRIBED \u2013 spiculated/indistinct", "margin", "Not circumscribed"),
    ("not circumscribed (spiculated)", "margin", "Not circumscribed"),
    ("indistinct and angular", "margin", "Not circumscribed"),
    ("circumscribed - spiculated", "margin", None),          # a subtype of the other parent: ambiguous
    ("hypoechoic / isoechoic", "echo", None),                # two labels: no answer
    ("hypoechoic, hypo-echoic", "echo", "Hypoechoic"),
    ("complex cystic and solid", "echo", None),
    ("heterogeneous", "echo", None),
    ("not applicable", "shape", None),
])
def test_birads_lexicon_subtypes_and_combinations(value, attr, label):
    assert normalise_label(value, attr) == label


def test_format_answer():
    assert format_answer("echo", "Hypoechoic") == '<answer>{"echo": "Hypoechoic"}</answer>'
    assert format_answer("margin", "Not circumscribed") == '<answer>{"margin": "Not circumscribed"}</answer>'
    with pytest.raises(ValueError, match="canonical"):
        format_answer("echo", "hypo-echoic")


@pytest.mark.parametrize("fn", [
    lambda: extract_answer("<answer>{}</answer>", "colour"),
    lambda: normalise_label("Oval", "Shape"),
    lambda: format_answer("size", "Oval"),
    lambda: extract_answer("x", None),
])
def test_unknown_attribute_is_a_value_error(fn):
    with pytest.raises(ValueError, match="unknown attribute"):
        fn()


@pytest.mark.parametrize("text,error", [
    ("<think>dark lesion</think> Hypoechoic", "no_answer"),
    ("", "no_answer"),
    ('<answer>{"echo": "Hypoechoic"}', "unclosed_answer"),
    ('<answer>{"echo": "Hypoechoic"</answer>', "bad_json"),
    ("<answer>Hypoechoic</answer>", "bad_json"),
    ("<answer>{'echo': 'Hypoechoic'}</answer>", "bad_json"),
    ("<answer></answer>", "bad_json"),
    ('<answer>["Hypoechoic"]</answer>', "not_object"),
    ('<answer>"Hypoechoic"</answer>', "not_object"),
    ('<answer>{"shape": "Hypoechoic"}</answer>', "missing_key"),
    ('<answer>{"answer": "Hypoechoic"}</answer>', "missing_key"),
    ('<answer>{"echo": 3}</answer>', "not_string"),
    ('<answer>{"echo": null}</answer>', "not_string"),
    ('<answer>{"echo": ["Hypoechoic"]}</answer>', "not_string"),
    ('<answer>{"echo": "Oval"}</answer>', "unknown_label"),
    ('<answer>{"echo": "probably hypoechoic"}</answer>', "unknown_label"),
    ('<answer>{"echo": ""}</answer>', "unknown_label"),
])
def test_invalid_answers(text, error):
    ans = extract_answer(text, "echo")
    assert not ans.valid and ans.label is None and ans.error == error
    assert ans.vote == INVALID


def test_non_string_text_is_invalid():
    assert extract_answer(None, "echo").error == "not_text"
    assert extract_answer(b"<answer>", "echo").error == "not_text"


def test_key_match_ignores_case_and_spaces():
    assert extract_answer('<answer>{" Echo ": "hypoechoic"}</answer>', "echo").label == "Hypoechoic"


def test_whitespace_inside_tags_as_in_paper():
    text = '<think>darker, high certainty.</think> <answer> {"echo": "Hypoechoic"} </answer>'
    assert extract_answer(text, "echo").label == "Hypoechoic"


def test_last_answer_tag_wins():
    text = ('<answer>{"shape": "Round"}</answer> on reflection '
            '<answer>{"shape": "Oval"}</answer>')
    assert extract_answer(text, "shape").label == "Oval"
    # the last one decides even when it is invalid
    text = '<answer>{"shape": "Round"}</answer><answer>{"shape": "blob"}</answer>'
    ans = extract_answer(text, "shape")
    assert not ans.valid and ans.error == "unknown_label" and ans.raw == '{"shape": "blob"}'


def test_extract_callable_path():
    seen = []

    def llm(text, attribute):
        seen.append((text, attribute))
        return "  hypo-echoic "

    ans = extract_answer("The lesion is dark and hypoechoic.", "echo", extract=llm)
    assert ans.valid and ans.label == "Hypoechoic" and ans.raw == "  hypo-echoic "
    assert seen == [("The lesion is dark and hypoechoic.", "echo")]
    assert extract_answer("x", "echo", extract=lambda t, a: None).error == "no_answer"
    assert extract_answer("x", "echo", extract=lambda t, a: "blob").error == "unknown_label"
    assert extract_answer("x", "echo", extract=lambda t, a: 7).error == "not_string"

    def broken(text, attribute):
        raise RuntimeError("judge offline")

    assert extract_answer("x", "echo", extract=broken).error == "extract_failed"
    # the callable replaces the tag rule
    tagged = '<answer>{"echo": "Hypoechoic"}</answer>'
    assert extract_answer(tagged, "echo", extract=lambda t, a: "Isoechoic").label == "Isoechoic"


def test_pathological_json_does_not_raise():
    deep = "<answer>" + "[" * 100_000 + "]" * 100_000 + "</answer>"
    assert extract_answer(deep, "echo").error in ("bad_json", "not_object")
    digits = '<answer>{"echo": %s}</answer>' % ("1" * 10_000)
    assert extract_answer(digits, "echo").error == "bad_json"
    assert extract_answer('<answer>{"echo": NaN}</answer>', "echo").error == "not_string"


_labels_any = st.sampled_from([l for ls in ATTRIBUTE_LABELS.values() for l in ls]
                              + [v for d in SYNONYMS.values() for vs in d.values() for v in vs])


@st.composite
def near_valid_answers(draw) -> str:
    key = draw(st.sampled_from(list(ATTRIBUTE_LABELS) + ["answer", "Echo", ""]))
    value = draw(st.one_of(_labels_any, st.text(max_size=12), st.integers(), st.floats(), st.none(),
                           st.lists(st.text(max_size=3), max_size=3)))
    try:
        body = json.dumps({key: value})
    except ValueError:
        body = "{}"
    body = draw(st.sampled_from(["{b}", " {b} ", "{b}}", "{{b}", "{b}]"])).replace("{b}", body)
    n = draw(st.integers(1, 3))
    close = draw(st.sampled_from(["</answer>", "</answer>", ""]))
    return draw(st.text(max_size=20)) + ("<answer>" + body + close) * n + draw(st.text(max_size=10))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=200), near_valid_answers()),
       attr=st.sampled_from(list(ATTRIBUTE_LABELS)))
def test_fuzz_never_raises(text, attr):
    ans = extract_answer(text, attr)
    assert isinstance(ans, Answer)
    if ans.valid:
        assert ans.label in ATTRIBUTE_LABELS[attr] and ans.error is None
    else:
        assert ans.label is None and isinstance(ans.error, str) and ans.vote == INVALID

"""Zoom-then-Diagnose dialogues: parse back exactly, tone follows c, message structure, corpus."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from zoomdx_lib.data import dialogue as D
from zoomdx_lib.config import get_profile
from zoomdx_lib.geometry import model_input_size
from zoomdx_lib.schema import ATTRIBUTE_LABELS, Sample, SampleError

SMOKE = get_profile("smoke")
DEFINITIVE = ("high certainty", "definitely")
CAUTIOUS = ("somewhat", "equivocal", "borderline", "ambiguous", "uncertain", "tentatively", "probably",
            "could be", "may be", "possibly")


def make_sample(attribute="echo", label="Hypoechoic", c=1, raters=None, box=(30.5, 40.0, 120.0, 99.0),
                size=(256, 256), sid="s1", question=""):
    return Sample(id=sid, image_path=f"images/{sid}.png", box=box, attribute=attribute, label=label, c=c,
                  organ="liver", question=question, rater_labels=raters, image_size=size)


@st.composite
def samples(draw):
    w, h = draw(st.integers(64, 900)), draw(st.integers(64, 900))
    bw, bh = draw(st.floats(0.1, 1.0)) * w, draw(st.floats(0.1, 1.0)) * h
    x1, y1 = draw(st.floats(0, w - bw)), draw(st.floats(0, h - bh))
    attr = draw(st.sampled_from(sorted(ATTRIBUTE_LABELS)))
    labels = ATTRIBUTE_LABELS[attr]
    label, other = draw(st.sampled_from(labels)), draw(st.sampled_from(labels))
    c = draw(st.integers(0, 1))
    raters = (label, label) if c else draw(st.sampled_from([(label, other), (other, label), None]))
    return make_sample(attr, label, c, raters, (x1, y1, min(x1 + bw, w), min(y1 + bh, h)), (w, h),
                       sid=f"h{draw(st.integers(0, 10 ** 6))}")


@settings(max_examples=150, deadline=None)
@given(samples(), st.one_of(st.none(), st.integers(0, 5)))
def test_dialogue_parses_back_to_box_and_answer(sample, seed):
    msize = model_input_size(*sample.image_size, SMOKE.model.min_pixels, SMOKE.model.max_pixels)
    d = D.build_dialogue(sample, msize, seed=seed)
    assert all(isinstance(v, int) for v in d.box_model)
    assert 0 <= d.box_model[0] < d.box_model[2] <= msize[0] and 0 <= d.box_model[1] < d.box_model[3] <= msize[1]
    # rounding to integer model pixels moves each side by <= 0.5 model px = 0.5 * scale original px
    tol = [0.5 * sample.image_size[0] / msize[0] + 1e-6, 0.5 * sample.image_size[1] / msize[1] + 1e-6] * 2
    for source in (d, D.to_messages(d, "images/x.png", "crops/x.png")):
        box, label = D.parse_dialogue(source, msize, sample.image_size, sample.attribute)
        assert label == sample.label
        assert all(abs(a - b) <= t for a, b, t in zip(box, sample.box, [tol[0], tol[1], tol[0], tol[1]]))
    assert d.turn1.startswith("<think>") and "</think>\n<tool_call>" in d.turn1
    assert d.turn2.startswith("<think>") and "</think>\n<answer>" in d.turn2


def test_tone_follows_confidence():
    for attr, labels in ATTRIBUTE_LABELS.items():
        for label in labels:
            other = next(x for x in labels if x != label)
            for key in range(6):
                sure = D.diagnostic_rationale(attr, label, 1, (label, label), key=str(key))
                assert any(w in sure for w in DEFINITIVE) and not any(w in sure for w in CAUTIOUS), sure
                assert label.lower() in sure
                for raters in ((label, other), (other, label), None):
                    unsure = D.diagnostic_rationale(attr, label, 0, raters, key=str(key))
                    assert any(w in unsure for w in CAUTIOUS) and not any(w in unsure for w in DEFINITIVE)
                    assert D.EVIDENCE[attr][label] in unsure
                    if raters is not None:  # both raters' labels are named when they differ
                        assert label.lower() in unsure and other.lower() in unsure, unsure


def test_paper_example_phrasing_and_length():
    d = D.build_dialogue(make_sample(c=1), (224, 224), seed=3)
    assert "darker than the surrounding tissue" in d.turn2 and "hypoechoic" in d.turn2
    assert d.turn2.endswith('<answer>{"echo": "Hypoechoic"}</answer>')
    for text in D.corpus_texts():
        if text.startswith(("Zoomed in", "In the image", "Scanning", "A focal", "The lesion", "I locate")):
            assert len(text.split()) <= 25, text


def test_deterministic_and_varied():
    s = make_sample(c=0, raters=("Hypoechoic", "Isoechoic"))
    assert D.build_dialogue(s, (224, 224), seed=1) == D.build_dialogue(s, (224, 224), seed=1)
    texts = {D.build_dialogue(make_sample(sid=f"id{i}"), (224, 224)).turn1 for i in range(40)}
    assert len(texts) > 1  # several search phrasings are in use
    diag = {D.build_dialogue(make_sample(sid=f"id{i}"), (224, 224)).diagnosis for i in range(40)}
    assert len(diag) > 1


def test_to_messages_structure():
    s = make_sample(question="What is the echogenicity of the lesion?")
    d = D.build_dialogue(s, (224, 224))
    m = D.to_messages(d, "images/s1.png", "crops/s1.png")
    assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"]
    assert m[0]["content"] == [{"type": "image", "image": "images/s1.png"},
                               {"type": "text", "text": "What is the echogenicity of the lesion?"}]
    assert m[1]["content"] == [{"type": "text", "text": d.turn1}]
    assert m[2]["content"] == [{"type": "image", "image": "crops/s1.png"}, {"type": "text", "text": "(Zoomed view)"}]
    assert m[3]["content"] == [{"type": "text", "text": d.turn2}]


def test_single_turn_messages():
    s = make_sample(attribute="margin", label="Not circumscribed", c=0, raters=("Not circumscribed", "Circumscribed"))
    m = D.single_turn_messages(s, None, "images/s1.png", seed=0)
    assert [x["role"] for x in m] == ["user", "assistant"]
    assert m[0]["content"][0] == {"type": "image", "image": "images/s1.png"}
    assert m[0]["content"][1]["text"] in D.QUESTIONS["margin"]
    text = m[1]["content"][0]["text"]
    assert "<tool_call>" not in text and "Zoomed" not in text
    assert D.parse_dialogue(m, (224, 224), (256, 256), "margin") == (None, "Not circumscribed")


def test_questions():
    for attr in ATTRIBUTE_LABELS:
        assert D.question_for(attr, 3) in D.QUESTIONS[attr]
        assert D.question_for(attr, random.Random(0)) in D.QUESTIONS[attr]
        assert D.question_for(attr, "a") == D.question_for(attr, "a")
    assert "Analyze the echo feature of the ultrasound image." in D.QUESTIONS["echo"]
    with pytest.raises(ValueError, match="unknown attribute"):
        D.question_for("colour", 0)
    assert D.build_dialogue(make_sample(question="Custom?"), (224, 224)).question == "Custom?"


def test_rewrite_hook():
    calls = []

    def rewrite(text, role, sample):
        calls.append(role)
        return f"Paraphrase of {role}."
    d = D.build_dialogue(make_sample(), (224, 224), rewrite=rewrite)
    assert calls == ["search", "diagnosis"]
    assert d.turn1.startswith("<think>Paraphrase of search.</think>\n<tool_call>")
    assert D.parse_dialogue(d, (224, 224), (256, 256), "echo")[1] == "Hypoechoic"
    with pytest.raises(ValueError, match="tags"):
        D.build_dialogue(make_sample(), (224, 224), rewrite=lambda t, r, s: "<answer>x</answer>")


def test_needs_image_size_and_handles_bad_messages():
    s = make_sample()
    s.image_size = None
    with pytest.raises(SampleError, match="s1"):
        D.build_dialogue(s, (224, 224))
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no call"},
           {"role": "assistant", "content": [{"type": "text", "text": "no answer"}]}]
    assert D.parse_dialogue(bad, (224, 224), (256, 256), "echo") == (None, None)
    assert D.parse_dialogue([], (224, 224), (256, 256), "echo") == (None, None)


def test_corpus_covers_every_generated_text():
    corpus = D.corpus_texts()
    assert corpus and len(corpus) == len(set(corpus))
    joined = set(corpus)
    for attr, labels in ATTRIBUTE_LABELS.items():
        for label in labels:
            assert label in joined and label.lower() in joined
    for q in sum(D.QUESTIONS.values(), []):
        assert q in joined
    rng = random.Random(0)
    for i in range(120):  # every default rationale a dialogue can contain is in the corpus
        attr = rng.choice(sorted(ATTRIBUTE_LABELS))
        label, other = rng.choice(ATTRIBUTE_LABELS[attr]), rng.choice(ATTRIBUTE_LABELS[attr])
        c = rng.randint(0, 1)
        s = make_sample(attr, label, c, (label, other) if not c else (label, label), sid=f"c{i}")
        d = D.build_dialogue(s, (224, 224), seed=i % 3)
        assert d.search in joined and d.diagnosis in joined
        single = D.single_turn_messages(s, None, "x.png", seed=i % 3)[1]["content"][0]["text"]
        assert single.split("</think>")[0][len("<think>"):] in joined

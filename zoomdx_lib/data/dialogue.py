"""Zoom-then-Diagnose conversations (paper Sec. 2.1) built from a sample (I, b, y, c).

The grammar (tags, tool call, answer, message layout) is :mod:`zoomdx_lib.protocol`; this module
writes the words. The tool-call box is in integer pixels of the MODEL-INPUT image (the processor's
resized image, see :mod:`zoomdx_lib.geometry`); every other box here is in ORIGINAL-image pixels. The paper has
Qwen2.5-VL-72B write the rationales; offline they come from short templates (a tiny model must be
able to learn them), and the tone follows c: definitive ("with high certainty") for consensus
c=1, cautious ("borderline", "equivocal") for disagreement c=0. Which phrasing a sample gets is a
deterministic function of (seed, sample id), so a rebuild gives identical text. A `rewrite`
callable can replace the templates with paraphrases from a larger model.
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from .. import protocol as P
from ..geometry import model_box
from ..schema import ATTRIBUTE_LABELS, Sample, SampleError

QUESTIONS: dict[str, list[str]] = {
    "echo": ["Analyze the echo feature of the ultrasound image.",
             "What is the echogenicity of the lesion?",
             "Describe the echo pattern of the lesion in this ultrasound image.",
             "How echogenic is the lesion compared with the surrounding tissue?"],
    "shape": ["Analyze the shape feature of the ultrasound image.",
              "Describe the shape of the lesion.",
              "What is the shape of the lesion?",
              "Is the lesion oval, round or irregular?"],
    "margin": ["Analyze the margin feature of the ultrasound image.",
               "Is the lesion margin circumscribed?",
               "Describe the margin of the lesion.",
               "How well defined is the lesion boundary?"],
}

# How the rationales name each attribute.
ATTRIBUTE_WORDS: dict[str, str] = {"echo": "echogenicity", "shape": "shape", "margin": "margin"}

# Visible evidence per label, an adjective phrase completing "the lesion appears ...".
EVIDENCE: dict[str, dict[str, str]] = {
    "echo": {"Anechoic": "black and fluid-like, with posterior enhancement",
             "Hypoechoic": "darker than the surrounding tissue",
             "Isoechoic": "as bright as the surrounding tissue",
             "Hyperechoic": "brighter than the surrounding tissue"},
    "shape": {"Oval": "elliptical and wider than tall",
              "Round": "round, as tall as wide",
              "Irregular": "irregular and lobulated"},
    "margin": {"Circumscribed": "sharply outlined with a smooth edge",
               "Not circumscribed": "blurred or spiculated at the edge"},
}

SEARCH_TEMPLATES: list[str] = [
    "Scanning the ultrasound image... I need to focus on the lesion region before judging its {word}.",
    "A focal lesion stands out in the image; I will zoom in on it to assess its {word}.",
    "The lesion is small in the full view, so I crop to it before judging its {word}.",
    "I locate the lesion first and zoom in to examine its {word} more closely.",
]

# {view}: where the evidence is seen; {ev}: EVIDENCE phrase; {lab}: label in lower case;
# {word}: ATTRIBUTE_WORDS; {a} / {b}: the two raters' labels in lower case.
CONFIDENT_TEMPLATES: list[str] = [
    "{view}, the lesion appears {ev} and should be classified as {lab}, with high certainty.",
    "{view}, the lesion is clearly {ev}; its {word} is {lab}, with high certainty.",
    "{view}, the lesion is {ev}, so the {word} is definitely {lab}.",
]
BORDERLINE_TEMPLATES: list[str] = [
    "{view}, the lesion appears somewhat {ev}, borderline between {a} and {b}; the finding is equivocal.",
    "{view}, the lesion is only somewhat {ev}; its {word} is likely {a} but could be {b}.",
    "{view}, the cues are ambiguous, borderline between {a} and {b}; the lesion may be {ev}.",
]
CAUTIOUS_TEMPLATES: list[str] = [
    "{view}, the lesion appears somewhat {ev}; the finding is equivocal, possibly {lab}.",
    "{view}, the lesion is only somewhat {ev}; its {word} is uncertain, tentatively {lab}.",
    "{view}, the cues are ambiguous; the lesion may be {ev}, so the {word} is probably {lab}.",
]
VIEWS = {"zoom": "Zoomed in", "full": "In the image"}

Rewrite = Callable[[str, str, Sample], str]


@dataclass
class Dialogue:
    """One Zoom-then-Diagnose conversation.

    Attributes:
        question: the user question (turn 0 text, shown with the full image).
        turn1: assistant turn 1, think + tool call.
        turn2: assistant turn 2, think + answer.
        box_model: integer (x1, y1, x2, y2) written in the tool call, pixels of the model-input image.
        box_original: the sample's lesion box, pixels of the original image.
        model_size / original_size: (width, height) in pixels of the two frames.
        attribute, label, c: copied from the sample.
        search / diagnosis: the two rationales (text inside <think>).
    """

    question: str
    turn1: str
    turn2: str
    box_model: tuple[int, int, int, int]
    box_original: tuple[float, float, float, float]
    model_size: tuple[int, int] = (0, 0)
    original_size: tuple[int, int] = (0, 0)
    attribute: str = ""
    label: str = ""
    c: int = 1
    search: str = ""
    diagnosis: str = ""


def _key_index(key: str, n: int, salt: str) -> int:
    """A stable (process-independent) index in [0, n) from a string key."""
    return zlib.crc32(f"{salt}|{key}".encode("utf-8")) % n


def _sample_key(sample: Sample, seed) -> str:
    return f"{seed}:{sample.id}" if seed is not None else str(sample.id)


def question_for(attribute: str, seed_or_rng: Union[int, str, random.Random, object, None] = 0) -> str:
    """One phrasing of the question about `attribute`.

    `seed_or_rng` is an int/str key (deterministic, stable across processes), a
    `random.Random`, or a numpy Generator (drawn from). Raises ValueError for an unknown attribute.
    """
    if attribute not in QUESTIONS:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {tuple(QUESTIONS)}")
    opts = QUESTIONS[attribute]
    if hasattr(seed_or_rng, "integers"):        # numpy Generator
        return opts[int(seed_or_rng.integers(len(opts)))]
    if hasattr(seed_or_rng, "randrange"):       # random.Random
        return opts[seed_or_rng.randrange(len(opts))]
    return opts[_key_index(str(seed_or_rng), len(opts), "question")]


def search_rationale(attribute: str, key: str = "") -> str:
    """The turn-1 search rationale (text inside <think>) for `attribute`, chosen by `key`."""
    t = SEARCH_TEMPLATES[_key_index(key, len(SEARCH_TEMPLATES), "search")]
    return t.format(word=ATTRIBUTE_WORDS[attribute])


def _other_label(attribute: str, label: str, rater_labels) -> Optional[str]:
    if rater_labels and len(rater_labels) == 2 and rater_labels[0] != rater_labels[1]:
        return next((r for r in rater_labels if r != label), rater_labels[1])
    return None


def diagnostic_rationale(attribute: str, label: str, c: int, rater_labels: Optional[Sequence[str]] = None,
                         key: str = "", view: str = "zoom") -> str:
    """The turn-2 diagnostic rationale: evidence for `label` with a tone set by c.

    c=1 gives definitive language; c=0 gives cautious language, naming both raters' labels
    ("borderline between X and Y") when `rater_labels` differ. `view` is "zoom" (the crop) or
    "full" (the no-zoom baseline). The phrasing is chosen by `key`.
    """
    if label not in ATTRIBUTE_LABELS.get(attribute, ()):
        raise ValueError(f"label {label!r} is not a canonical {attribute!r} label")
    other = _other_label(attribute, label, rater_labels)
    if c == 1:
        pool = CONFIDENT_TEMPLATES
    else:
        pool = BORDERLINE_TEMPLATES if other is not None else CAUTIOUS_TEMPLATES
    return _fill(pool[_key_index(key, len(pool), f"diag{c}")], attribute, label, other, view)


def _fill(template: str, attribute: str, label: str, other: Optional[str], view: str) -> str:
    b = other if other is not None else label
    return template.format(view=VIEWS[view], ev=EVIDENCE[attribute][label], lab=label.lower(),
                           word=ATTRIBUTE_WORDS[attribute], a=label.lower(), b=b.lower())


def _apply_rewrite(rewrite: Optional[Rewrite], text: str, role: str, sample: Sample) -> str:
    if rewrite is None:
        return text
    out = rewrite(text, role, sample)
    if not isinstance(out, str) or not out.strip():
        raise ValueError(f"rewrite returned an empty/non-string {role} rationale for sample {sample.id!r}")
    bad = [t for t in ("<think>", "</think>", "<tool_call>", "<answer>") if t in out]
    if bad:
        raise ValueError(f"rewrite put tags {bad} into the {role} rationale of sample {sample.id!r}")
    return out.strip()


def build_dialogue(sample: Sample, model_size: tuple[int, int], seed=None,
                   rewrite: Optional[Rewrite] = None) -> Dialogue:
    """Build the two-turn Zoom-then-Diagnose dialogue of `sample`.

    Args:
        sample: needs image_size (original (width, height) pixels) and box (original pixels).
            An empty sample.question gets one from :func:`question_for`.
        model_size: (width, height) in pixels of the model-input image
            (``geometry.model_input_size``); the tool-call box is written in this frame.
        seed: mixes into the deterministic choice of phrasings (None = by sample id only).
        rewrite: optional ``callable(text, role, sample) -> str`` paraphrasing each rationale,
            role "search" or "diagnosis"; default: the templates as they are.
    """
    if sample.image_size is None:
        raise SampleError(f"sample {sample.id!r}: image_size (original width, height) is needed "
                          f"to convert its box to model-input pixels")
    key = _sample_key(sample, seed)
    question = sample.question or question_for(sample.attribute, key)
    bm = model_box(sample.box, sample.image_size, model_size)
    search = _apply_rewrite(rewrite, search_rationale(sample.attribute, key), "search", sample)
    diag = _apply_rewrite(rewrite, diagnostic_rationale(sample.attribute, sample.label, sample.c,
                                                        sample.rater_labels, key), "diagnosis", sample)
    return Dialogue(question=question,
                    turn1=P.turn(search, P.format_tool_call(bm)),
                    turn2=P.turn(diag, P.format_answer(sample.attribute, sample.label)),
                    box_model=bm, box_original=tuple(float(v) for v in sample.box),
                    model_size=tuple(model_size), original_size=tuple(sample.image_size),
                    attribute=sample.attribute, label=sample.label, c=int(sample.c),
                    search=search, diagnosis=diag)


def to_messages(dialogue: Dialogue, image_path: str, crop_path: str) -> list[dict]:
    """Chat messages (transformers / TRL format) of a dialogue; images given by path."""
    return P.zoom_messages(dialogue.question, dialogue.turn1, dialogue.turn2, image_path, crop_path)


def single_turn_messages(sample: Sample, question: Optional[str], image_path: str, seed=None,
                         rewrite: Optional[Rewrite] = None) -> list[dict]:
    """No-zoom baseline messages: user image + question -> think + answer (no tool call).

    `question` None or "" uses sample.question or :func:`question_for`. Phrasing is chosen as in
    :func:`build_dialogue` (same seed, same sample -> same rationale tone and wording).
    """
    key = _sample_key(sample, seed)
    question = question or sample.question or question_for(sample.attribute, key)
    diag = _apply_rewrite(rewrite, diagnostic_rationale(sample.attribute, sample.label, sample.c,
                                                        sample.rater_labels, key, view="full"),
                          "diagnosis", sample)
    return P.single_turn_messages(question, P.turn(diag, P.format_answer(sample.attribute, sample.label)), image_path)


def parse_dialogue(messages_or_dialogue, model_size: tuple[int, int], original_size: tuple[int, int],
                   attribute: str, min_side: float = 0.0):
    """Read (box_original, label) back from a dialogue or its chat messages.

    The box is the first assistant turn's tool call converted to ORIGINAL-image pixels
    (``protocol.parse_tool_call``; `min_side` in model-input pixels, 0 = the box as written) or None
    when there is no valid call (e.g. single-turn messages); the label is the last assistant
    turn's answer (``protocol.extract_answer``) or None when invalid.
    """
    if isinstance(messages_or_dialogue, Dialogue):
        texts = [messages_or_dialogue.turn1, messages_or_dialogue.turn2]
    else:
        texts = P.assistant_texts(messages_or_dialogue)
    if not texts:
        return None, None
    box = None
    if len(texts) > 1:
        call = P.parse_tool_call(texts[0], model_size, original_size, min_side=min_side)
        box = call.box_original if call.ok else None
    ans = P.extract_answer(texts[-1], attribute)
    return box, (ans.label if ans.valid else None)


def corpus_texts() -> list[str]:
    """Every question, rationale phrasing (all attributes, labels and tones), label and tag form.

    Used to train the tiny model's BPE tokenizer so all dialogue text tokenizes compactly.
    """
    out: list[str] = [P.ZOOM_TEXT, P.THINK_OPEN, P.THINK_CLOSE, P.TOOL_CALL_OPEN, P.TOOL_CALL_CLOSE, P.ANSWER_OPEN,
                      P.ANSWER_CLOSE, '{"bbox_2d": [', "]}", " ".join(str(i) for i in range(10))]
    for attr, labels in ATTRIBUTE_LABELS.items():
        out += QUESTIONS[attr]
        out += [t.format(word=ATTRIBUTE_WORDS[attr]) for t in SEARCH_TEMPLATES]
        for lab in labels:
            out += [lab, lab.lower(), lab.upper(), P.format_answer(attr, lab), f'"{attr}": "{lab}"']
            for view in VIEWS:
                out += [_fill(t, attr, lab, None, view) for t in CONFIDENT_TEMPLATES + CAUTIOUS_TEMPLATES]
                out += [_fill(t, attr, lab, o, view) for t in BORDERLINE_TEMPLATES for o in labels if o != lab]
    out += [P.format_tool_call(b) for b in ([0, 0, 28, 28], [12, 34, 156, 178], [101, 99, 223, 200])]
    return list(dict.fromkeys(out))

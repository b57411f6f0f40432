"""Judge-free extraction of the diagnostic attribute from a turn-2 text.

The paper parses each trajectory's answer with Qwen2.5-VL-72B. Offline, the workbook uses a
deterministic rule: the LAST ``<answer>{json}</answer>`` in the text (a model that restates or
corrects itself means its final statement; the rollout stops at the first closing tag anyway, so
for generated text first and last usually coincide), a JSON object whose key is the attribute
("echo", "shape", "margin"), and a value normalised to a canonical label of
``schema.ATTRIBUTE_LABELS`` (case, whitespace, hyphens/underscores and common synonyms such as
"hypo-echoic", "ill-defined", "elliptical"). Anything else is an invalid answer: label None, a
short error, counted as the label :data:`INVALID` in mode / kappa counting. An optional
``extract(text, attribute) -> str | None`` callable stands in for an LLM parser; its output goes
through the same normalisation.

A malformed answer is data, not an exception: :func:`extract_answer` never raises on model
output. An unknown *attribute* argument is a programming error and raises ValueError.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Optional

from .schema import ATTRIBUTE_LABELS

# Every <answer> ... </answer>; the group is the raw text between the tags.
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ANSWER_OPEN = "<answer>"

# The label value counted for an invalid answer (mode / kappa / entropy counting elsewhere).
INVALID = "invalid"

# Synonyms per attribute, written in "compact" form: lower case, no spaces, hyphens or
# underscores (see _compact). The canonical labels themselves are added below.
_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "echo": {
        "Anechoic": ("anechoic", "anechogenic", "cystic", "noecho", "echofree"),
        "Hypoechoic": ("hypoechoic", "hypoechogenic", "lowecho", "markedlyhypoechoic", "veryhypoechoic"),
        "Isoechoic": ("isoechoic", "isoechogenic", "isoecho"),
        "Hyperechoic": ("hyperechoic", "hyperechogenic", "highecho"),
    },
    "shape": {
        "Oval": ("oval", "ovoid", "ellipse", "elliptical", "elliptic", "ellipsoid"),
        "Round": ("round", "rounded", "circular", "circle"),
        "Irregular": ("irregular",),
    },
    "margin": {
        "Circumscribed": ("circumscribed", "wellcircumscribed", "welldefined", "smooth"),
        "Not circumscribed": ("notcircumscribed", "noncircumscribed", "uncircumscribed", "illdefined",
                              "poorlydefined", "indistinct", "spiculated", "microlobulated", "angular"),
    },
}

_STRIP = " \t\r\n.,;:!?\"'`()[]{}*"


def _compact(s: str) -> str:
    """Lower case, surrounding punctuation removed, no whitespace, hyphens or underscores."""
    s = s.strip(_STRIP).lower()
    return re.sub(r"[\s\-_\u2010-\u2015]+", "", s)


_LOOKUP: dict[str, dict[str, str]] = {}
for _attr, _labels in ATTRIBUTE_LABELS.items():
    _table: dict[str, str] = {}
    for _label in _labels:
        _table[_compact(_label)] = _label
        for _syn in _SYNONYMS.get(_attr, {}).get(_label, ()):
            _table[_compact(_syn)] = _label
    _LOOKUP[_attr] = _table


def _check_attribute(attribute) -> None:
    if not isinstance(attribute, str) or attribute not in ATTRIBUTE_LABELS:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {tuple(ATTRIBUTE_LABELS)}")


@dataclass
class Answer:
    """One extracted answer.

    Attributes:
        label: canonical label from ``ATTRIBUTE_LABELS[attribute]``, or None when invalid.
        valid: True when label is a canonical label.
        error: None when valid, else "not_text", "no_answer", "unclosed_answer", "bad_json",
            "not_object", "missing_key", "not_string", "unknown_label" or "extract_failed".
        raw: the raw text between the chosen tags (or the `extract` callable's output).
    """

    label: Optional[str]
    valid: bool
    error: Optional[str]
    raw: Optional[str]

    @property
    def vote(self) -> str:
        """The value counted in mode / kappa counting: the label, or INVALID."""
        return self.label if self.valid and self.label is not None else INVALID


def normalise_label(value, attribute: str) -> Optional[str]:
    """The canonical label of `attribute` that `value` names, or None.

    Case, surrounding whitespace/punctuation, hyphens and underscores are ignored and common
    synonyms are mapped ("hypo-echoic" -> "Hypoechoic", "ill-defined" -> "Not circumscribed").
    Non-strings give None. Raises ValueError for an unknown attribute.

    >>> normalise_label("hypo-echoic", "echo")
    'Hypoechoic'
    >>> normalise_label("Ill defined", "margin")
    'Not circumscribed'
    >>> normalise_label("oval", "echo") is None
    True
    """
    _check_attribute(attribute)
    if not isinstance(value, str):
        return None
    return _LOOKUP[attribute].get(_compact(value))


def _from_value(value, attribute: str, raw: Optional[str]) -> Answer:
    if not isinstance(value, str):
        return Answer(None, False, "not_string", raw)
    label = normalise_label(value, attribute)
    if label is None:
        return Answer(None, False, "unknown_label", raw)
    return Answer(label, True, None, raw)


def extract_answer(text: str, attribute: str, extract: Optional[Callable] = None) -> Answer:
    """Extract the `attribute` label from a turn-2 text.

    Args:
        text: the model's output (turn 2, or the whole trajectory).
        attribute: "echo", "shape" or "margin" (ValueError otherwise).
        extract: optional ``callable(text, attribute) -> str | None`` standing in for the paper's
            LLM parser; when given it replaces the tag rule and its output is normalised with
            :func:`normalise_label` (None -> "no_answer"; an exception -> "extract_failed").

    Returns:
        An :class:`Answer`. The rule reads the LAST ``<answer>...</answer>``, a JSON object
        whose key is the attribute (key matched case-insensitively). Never raises on model output.

    >>> extract_answer('<think>dark</think><answer>{"echo": "hypo-echoic"}</answer>', "echo")
    Answer(label='Hypoechoic', valid=True, error=None, raw='{"echo": "hypo-echoic"}')
    >>> extract_answer('<answer>{"shape": "Oval"}</answer>', "echo").error
    'missing_key'
    """
    _check_attribute(attribute)
    if extract is not None:
        try:
            out = extract(text, attribute)
        except Exception:
            return Answer(None, False, "extract_failed", None)
        if out is None:
            return Answer(None, False, "no_answer", None)
        return _from_value(out, attribute, out if isinstance(out, str) else None)
    if not isinstance(text, str):
        return Answer(None, False, "not_text", None)
    matches = ANSWER_RE.findall(text)
    if not matches:
        return Answer(None, False, "unclosed_answer" if ANSWER_OPEN in text else "no_answer", None)
    raw = matches[-1]
    try:
        obj = json.loads(raw)
    except Exception:  # JSONDecodeError, RecursionError (deep nesting), ValueError (huge ints)
        return Answer(None, False, "bad_json", raw)
    if not isinstance(obj, dict):
        return Answer(None, False, "not_object", raw)
    key = next((k for k in obj if isinstance(k, str) and k.strip().lower() == attribute), None)
    if key is None:
        return Answer(None, False, "missing_key", raw)
    return _from_value(obj[key], attribute, raw)


def format_answer(attribute: str, label: str) -> str:
    """The canonical answer text for a canonical label.

    Raises ValueError for an unknown attribute or a label outside ``ATTRIBUTE_LABELS[attribute]``.

    >>> format_answer("echo", "Hypoechoic")
    '<answer>{"echo": "Hypoechoic"}</answer>'
    """
    _check_attribute(attribute)
    if label not in ATTRIBUTE_LABELS[attribute]:
        raise ValueError(f"label {label!r} is not a canonical {attribute} label; "
                         f"expected one of {ATTRIBUTE_LABELS[attribute]}")
    return "<answer>" + json.dumps({attribute: label}) + "</answer>"

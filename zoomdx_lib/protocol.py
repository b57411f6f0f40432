"""The dialogue grammar: tags, the tool-call and answer formats and their parsers, the chat messages.

Long because it is the whole grammar in one place: the formats and the two parsers that must agree.

A Zoom-then-Diagnose conversation (paper Sec. 2.1) is, in chat messages::

    user:      <image> {question}
    assistant: <think>{search rationale}</think>\\n<tool_call>{"bbox_2d": [x1, y1, x2, y2]}</tool_call>
    user:      <crop image> (Zoomed view)
    assistant: <think>{diagnostic rationale}</think>\\n<answer>{"echo": "Hypoechoic"}</answer>

The tool-call box is in absolute pixels of the *model-input* image (the Qwen2.5-VL convention; see
:mod:`zoomdx_lib.geometry`). Everything that writes or reads this grammar comes here: the dialogue
builder, the tokeniser's corpus, the rollout engine, the rewards and the figures.

Parsing is judge-free and never raises on model output; a malformed turn is data:

* :func:`parse_tool_call` takes the FIRST ``<tool_call>...</tool_call>`` (the rollout stops at the
  first closing tag), a JSON object with ``"bbox_2d"`` holding exactly 4 finite JSON numbers (bools
  and numeric strings rejected; a Hermes-style ``{"name": ..., "arguments": {...}}`` wrapper
  accepted), cleans the box with :func:`geometry.clean_box` and converts it to original pixels.
* :func:`extract_answer` takes the LAST ``<answer>{json}</answer>`` (a model that corrects itself
  means its final statement), a JSON object keyed by the attribute, and a value normalised with
  :func:`schema.normalise_label`. The paper parses answers with Qwen2.5-VL-72B; an optional
  ``extract(text, attribute)`` callable stands in for such a parser.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .geometry import MIN_SIDE, Box, box_to_original, clamp_box, clean_box, round_box
from .schema import ATTRIBUTE_LABELS, check_attribute, normalise_label

# ------------------------------------------------------------------------------------ tags and texts
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
ZOOM_TEXT = "(Zoomed view)"        # the user text that comes with the crop image
# Appended to the question when a base that knows both formats is asked to answer in one turn from the full
# view: the Zoom-then-Diagnose prompt and the one-turn prompt are otherwise the same text.
ONE_TURN_INSTRUCTION = "Answer directly from the full image, without zooming."


def one_turn_question(question: str) -> str:
    """The question with :data:`ONE_TURN_INSTRUCTION` on its own line.

    >>> one_turn_question("What is the echogenicity?")
    'What is the echogenicity?\\nAnswer directly from the full image, without zooming.'
    """
    return f"{question}\n{ONE_TURN_INSTRUCTION}"

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_OR_UNCLOSED = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

INVALID = "invalid"                # the vote counted for an invalid answer (mode / kappa counting)


def has_think(text: Optional[str]) -> bool:
    """True when `text` holds a ``<think>...</think>`` block with non-whitespace content.

    >>> has_think("<think>hypoechoic lesion, upper left</think><tool_call>{}</tool_call>")
    True
    >>> has_think("<think>  </think><answer>x</answer>")
    False
    >>> has_think("no tags at all")
    False
    """
    if not text:
        return False
    return any(m.strip() for m in THINK_RE.findall(text))


def think_text(text: Optional[str], unclosed: bool = False) -> str:
    """The first ``<think>`` block's text, stripped; "" when there is none.

    With ``unclosed=True`` a block cut off before ``</think>`` counts too (for display).

    >>> think_text("<think> dark lesion </think><answer>{}</answer>")
    'dark lesion'
    >>> think_text("<think>cut off", unclosed=True), think_text("<think>cut off")
    ('cut off', '')
    """
    m = (_THINK_OR_UNCLOSED if unclosed else THINK_RE).search(text or "")
    return m.group(1).strip() if m else ""


# ------------------------------------------------------------------------------------ the tool call
@dataclass
class ToolCall:
    """Result of parsing one turn-1 text.

    Attributes:
        ok: True when the text holds a usable zoom call.
        error: None when ok, else a short machine-readable reason: "not_text", "no_tool_call",
            "unclosed_tool_call", "bad_json", "not_object", "missing_bbox_2d", "not_list",
            "wrong_length", "not_number", "not_finite", "zero_area", "outside_image".
        box_model: (x1, y1, x2, y2) floats in pixels of the model-input (resized) image after
            corner ordering, clamping, padding and min-side enlargement; None when not ok.
        box_original: the same box in pixels of the original image; None when not ok.
        raw: the raw text between the tags (None when there is no complete tool call).
    """

    ok: bool
    error: Optional[str]
    box_model: Optional[Box]
    box_original: Optional[Box]
    raw: Optional[str]


def _check_size(size, name: str) -> tuple[int, int]:
    try:
        w, h = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (width, height) in pixels, got {size!r}") from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in (w, h)):
        raise ValueError(f"{name} must be positive finite (width, height) pixels, got {size!r}")
    return w, h


def _fail(error: str, raw: Optional[str] = None) -> ToolCall:
    return ToolCall(ok=False, error=error, box_model=None, box_original=None, raw=raw)


def _call_numbers(text: str):
    """The 4 floats of the first tool call in `text`, or a failed ToolCall."""
    m = TOOL_CALL_RE.search(text)
    if m is None:
        return _fail("unclosed_tool_call" if TOOL_CALL_OPEN in text else "no_tool_call")
    raw = m.group(1)
    try:
        obj = json.loads(raw)
    except Exception:  # JSONDecodeError, RecursionError (deep nesting), ValueError (huge ints)
        return _fail("bad_json", raw)
    if not isinstance(obj, dict):
        return _fail("not_object", raw)
    if "bbox_2d" not in obj and isinstance(obj.get("arguments"), dict):
        obj = obj["arguments"]  # Hermes-style {"name": "zoom", "arguments": {"bbox_2d": [...]}}
    if "bbox_2d" not in obj:
        return _fail("missing_bbox_2d", raw)
    vals = obj["bbox_2d"]
    if not isinstance(vals, list):
        return _fail("not_list", raw)
    if len(vals) != 4:
        return _fail("wrong_length", raw)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
        return _fail("not_number", raw)
    try:
        box = tuple(float(v) for v in vals)
    except OverflowError:  # an int too large for a float
        return _fail("not_finite", raw)
    if not all(math.isfinite(v) for v in box):
        return _fail("not_finite", raw)
    return box, raw


def parse_tool_call(text: str, model_size: tuple[int, int], original_size: tuple[int, int],
                    min_side: float = MIN_SIDE, pad_frac: float = 0.0) -> ToolCall:
    """Parse the first ``<tool_call>{"bbox_2d": [x1, y1, x2, y2]}</tool_call>`` in `text`.

    Args:
        text: the model's turn-1 output (any string; a non-string gives error "not_text").
        model_size: (width, height) in pixels of the model-input (resized) image; the call's
            numbers are absolute pixels of this image.
        original_size: (width, height) in pixels of the original image.
        min_side: minimum side of the returned box, in model-input pixels (capped at the image
            side; default :data:`~zoomdx_lib.geometry.MIN_SIDE`, one visual token); a smaller box
            is enlarged about its centre and shifted to stay inside.
        pad_frac: context padding added on each side, as a fraction of the (clamped) box width
            / height; 0 = none.

    Returns:
        A :class:`ToolCall`. ``ok=True`` boxes satisfy ``0 <= x1 < x2 <= W``,
        ``0 <= y1 < y2 <= H`` in model-input pixels with sides >= ``min(min_side, W or H)``.
        Never raises on any string content; raises ValueError only for bad sizes/arguments.
    """
    _check_size(model_size, "model_size")
    _check_size(original_size, "original_size")
    if not (isinstance(min_side, numbers.Real) and math.isfinite(min_side) and min_side >= 0):
        raise ValueError(f"min_side must be a finite number >= 0 (model-input pixels), got {min_side!r}")
    if not (isinstance(pad_frac, numbers.Real) and math.isfinite(pad_frac) and pad_frac >= 0):
        raise ValueError(f"pad_frac must be a finite number >= 0, got {pad_frac!r}")
    if not isinstance(text, str):
        return _fail("not_text")
    parsed = _call_numbers(text)
    if isinstance(parsed, ToolCall):
        return parsed
    box, raw = parsed
    box_model, error = clean_box(box, model_size, min_side, pad_frac)
    if error is not None:
        return _fail(error, raw)
    box_orig = clamp_box(box_to_original(box_model, original_size, model_size), original_size)
    return ToolCall(ok=True, error=None, box_model=box_model, box_original=box_orig, raw=raw)


def format_tool_call(box_model: Sequence[float]) -> str:
    """The canonical tool-call text for a box in model-input pixels (rounded to integers).

    >>> format_tool_call((10, 20.4, 110, 99.6))
    '<tool_call>{"bbox_2d": [10, 20, 110, 100]}</tool_call>'
    >>> parse_tool_call(format_tool_call((10, 20, 110, 100)), (252, 168), (640, 480)).box_model
    (10.0, 20.0, 110.0, 100.0)
    """
    return TOOL_CALL_OPEN + json.dumps({"bbox_2d": round_box(box_model)}) + TOOL_CALL_CLOSE


# ------------------------------------------------------------------------------------ the answer
@dataclass
class Answer:
    """One extracted answer.

    Attributes:
        label: canonical label from ``ATTRIBUTE_LABELS[attribute]``, or None when invalid.
        valid: True when label is a canonical label.
        error: None when valid, else "not_text", "no_answer", "unclosed_answer", "bad_json",
            "not_object", "missing_key", "not_string", "unknown_label", "extract_failed" (or
            "no_turn2" when the rollout never reached turn 2).
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
    check_attribute(attribute)
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
    check_attribute(attribute)
    if label not in ATTRIBUTE_LABELS[attribute]:
        raise ValueError(f"label {label!r} is not a canonical {attribute} label; "
                         f"expected one of {ATTRIBUTE_LABELS[attribute]}")
    return ANSWER_OPEN + json.dumps({attribute: label}) + ANSWER_CLOSE


def turn(think: str, tail: str) -> str:
    """An assistant turn: the rationale in ``<think>`` and, on the next line, a tool call or answer."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}\n{tail}"


# ------------------------------------------------------------------------------------ chat messages
def user_image_message(text: str, image: Optional[str] = None) -> dict:
    """A user message with one image and a text; `image` is a path, or None when the processor gets
    the image separately (the chat template only needs to know an image is there)."""
    part = {"type": "image"} if image is None else {"type": "image", "image": image}
    return {"role": "user", "content": [part, {"type": "text", "text": text}]}


def assistant_message(text: str) -> dict:
    """An assistant message holding one text part."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def zoom_messages(question: str, turn1: str, turn2: Optional[str] = None, image: Optional[str] = None,
                  crop: Optional[str] = None) -> list[dict]:
    """The Zoom-then-Diagnose messages: image + question, turn 1, the crop turn, and turn 2 when given."""
    msgs = [user_image_message(question, image), assistant_message(turn1), user_image_message(ZOOM_TEXT, crop)]
    return msgs + ([assistant_message(turn2)] if turn2 is not None else [])


def single_turn_messages(question: str, answer_turn: Optional[str] = None, image: Optional[str] = None) -> list[dict]:
    """The no-zoom baseline's messages: image + question, then one answering turn when given."""
    return [user_image_message(question, image)] + ([assistant_message(answer_turn)] if answer_turn is not None else [])


def assistant_texts(messages: Sequence[dict]) -> list[str]:
    """The text of every assistant message, in order."""
    out = []
    for m in messages:
        if m.get("role") != "assistant":
            continue
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        else:
            out.append("".join(p.get("text", "") for p in content if p.get("type") == "text"))
    return out


def image_paths(messages: Sequence[dict]) -> list[str]:
    """The image paths of chat messages, in order of appearance."""
    return [part["image"] for m in messages if isinstance(m["content"], list)
            for part in m["content"] if part.get("type") == "image"]

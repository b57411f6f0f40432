"""The zoom tool: parse the model's ``<tool_call>``, clean up its box, crop the original image.

Turn 1 of a Zoom-then-Diagnose dialogue ends with

    <tool_call>{"bbox_2d": [x1, y1, x2, y2]}</tool_call>

where the numbers are absolute pixels of the *resized model-input image* (the Qwen2.5-VL
convention: the image the processor feeds the model, both sides multiples of 28). The tool

1. takes the FIRST ``<tool_call>...</tool_call>`` in the text (later ones are ignored: the
   rollout stops generating at the first closing tag, so anything after it is not a call);
2. reads a JSON object with key ``"bbox_2d"`` holding exactly 4 finite JSON numbers (bools and
   numeric strings are rejected; a Hermes-style ``{"name": ..., "arguments": {"bbox_2d": ...}}``
   wrapper is accepted too);
3. orders the corners, rejects zero-area boxes and boxes entirely outside the image, clamps to
   ``[0, W] x [0, H]`` of the model-input image, optionally pads by ``pad_frac`` of the box
   size per side, and enlarges each side to at least ``min_side`` model-input pixels (centred,
   shifted to stay inside the image);
4. converts the box to original-image pixels with :func:`zoomdx_lib.geometry.box_to_original`
   and crops the ORIGINAL-resolution image there, resized to about ``target_pixels`` with both
   sides multiples of 28, so the processor takes the crop as it is.

A malformed call is data, not an exception: :func:`parse_tool_call` never raises on model output;
it returns ``ToolCall(ok=False, error=<short reason>)`` and the rollout counts it (zero format
reward, no crop). Wrong sizes or arguments from the calling code are programming errors and raise
``ValueError``.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from PIL import Image

from .geometry import box_to_original, round_box

# The first <tool_call> ... </tool_call>; the group is the raw text between the tags.
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
TOOL_CALL_OPEN = "<tool_call>"

Box = tuple[float, float, float, float]


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


def _grow(a: float, b: float, m: float, lim: float) -> tuple[float, float]:
    """Enlarge [a, b] inside [0, lim] to length >= m (centred, shifted inward); whole axis if m >= lim."""
    if b - a >= m:
        return a, b
    if m >= lim:
        return 0.0, float(lim)
    c = (a + b) / 2.0
    a = max(0.0, c - m / 2.0)
    b = a + m
    if b > lim:
        b = float(lim)
        a = b - m
    return a, b


def parse_tool_call(text: str, model_size: tuple[int, int], original_size: tuple[int, int],
                    min_side: float = 28.0, pad_frac: float = 0.0) -> ToolCall:
    """Parse the first ``<tool_call>{"bbox_2d": [x1, y1, x2, y2]}</tool_call>`` in `text`.

    Args:
        text: the model's turn-1 output (any string; a non-string gives error "not_text").
        model_size: (width, height) in pixels of the model-input (resized) image; the call's
            numbers are absolute pixels of this image.
        original_size: (width, height) in pixels of the original image.
        min_side: minimum side of the returned box, in model-input pixels (capped at the image
            side); a smaller box is enlarged about its centre and shifted to stay inside.
        pad_frac: context padding added on each side, as a fraction of the (clamped) box width
            / height; 0 = none.

    Returns:
        A :class:`ToolCall`. ``ok=True`` boxes satisfy ``0 <= x1 < x2 <= W``,
        ``0 <= y1 < y2 <= H`` in model-input pixels with sides >= ``min(min_side, W or H)``.
        Never raises on any string content; raises ValueError only for bad sizes/arguments.
    """
    mw, mh = _check_size(model_size, "model_size")
    _check_size(original_size, "original_size")
    if not (isinstance(min_side, numbers.Real) and math.isfinite(min_side) and min_side >= 0):
        raise ValueError(f"min_side must be a finite number >= 0 (model-input pixels), got {min_side!r}")
    if not (isinstance(pad_frac, numbers.Real) and math.isfinite(pad_frac) and pad_frac >= 0):
        raise ValueError(f"pad_frac must be a finite number >= 0, got {pad_frac!r}")
    if not isinstance(text, str):
        return _fail("not_text")

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
        x1, y1, x2, y2 = (float(v) for v in vals)
    except OverflowError:  # an int too large for a float
        return _fail("not_finite", raw)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return _fail("not_finite", raw)

    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    if x1 == x2 or y1 == y2:
        return _fail("zero_area", raw)
    if x2 <= 0 or y2 <= 0 or x1 >= mw or y1 >= mh:
        return _fail("outside_image", raw)
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(mw)), min(y2, float(mh))
    if not (x2 > x1 and y2 > y1):  # cannot happen after the checks above; kept as a guard
        return _fail("zero_area", raw)
    if pad_frac > 0:
        px, py = pad_frac * (x2 - x1), pad_frac * (y2 - y1)
        x1, y1 = max(0.0, x1 - px), max(0.0, y1 - py)
        x2, y2 = min(float(mw), x2 + px), min(float(mh), y2 + py)
    x1, x2 = _grow(x1, x2, float(min_side), mw)
    y1, y2 = _grow(y1, y2, float(min_side), mh)
    box_model = (x1, y1, x2, y2)

    ow, oh = original_size
    bo = box_to_original(box_model, original_size, model_size)
    box_orig = (min(max(bo[0], 0.0), float(ow)), min(max(bo[1], 0.0), float(oh)),
                min(max(bo[2], 0.0), float(ow)), min(max(bo[3], 0.0), float(oh)))
    return ToolCall(ok=True, error=None, box_model=box_model, box_original=box_orig, raw=raw)


def format_tool_call(box_model: Sequence[float]) -> str:
    """The canonical tool-call text for a box in model-input pixels (rounded to integers).

    Used by the dialogue builder for turn 1; ``parse_tool_call`` gives the box back for integer
    boxes inside the image with sides >= min_side.

    >>> format_tool_call((10, 20.4, 110, 99.6))
    '<tool_call>{"bbox_2d": [10, 20, 110, 100]}</tool_call>'
    >>> parse_tool_call(format_tool_call((10, 20, 110, 100)), (252, 168), (640, 480)).box_model
    (10.0, 20.0, 110.0, 100.0)
    """
    return "<tool_call>" + json.dumps({"bbox_2d": round_box(box_model)}) + "</tool_call>"


def crop_output_size(width: int, height: int, target_pixels: int, factor: int = 28,
                     min_pixels: Optional[int] = None, max_pixels: Optional[int] = None) -> tuple[int, int]:
    """(width, height) in pixels a crop of `width` x `height` original pixels is resized to.

    Keeps the aspect ratio, scales the area to about `target_pixels`, and rounds each side to the
    nearest multiple of `factor` (at least `factor`). When `min_pixels` / `max_pixels` (the
    processor's bounds) are given, the result is nudged by whole `factor` steps so its area lies
    inside them where the grid allows, so the processor does not resize the crop again.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"crop size must be positive pixels, got {width}x{height}")
    if target_pixels <= 0 or factor <= 0:
        raise ValueError(f"target_pixels and factor must be positive, got {target_pixels}, {factor}")
    scale = math.sqrt(target_pixels / (width * height))
    tw = max(factor, int(round(width * scale / factor)) * factor)
    th = max(factor, int(round(height * scale / factor)) * factor)
    if min_pixels is not None:
        while tw * th < min_pixels:  # grow the side whose growth keeps the aspect ratio best
            if tw / th <= width / height:
                tw += factor
            else:
                th += factor
    if max_pixels is not None:
        while tw * th > max_pixels and (tw > factor or th > factor):
            if (tw / th >= width / height and tw > factor) or th <= factor:
                tw -= factor
            else:
                th -= factor
    return tw, th


def crop_image(image: Image.Image, box_original: Sequence[float], target_pixels: int, factor: int = 28,
               resample=Image.BICUBIC, min_pixels: Optional[int] = None,
               max_pixels: Optional[int] = None) -> Image.Image:
    """Deterministic crop of the ORIGINAL-resolution image, resized for the processor.

    Args:
        image: the original image (any PIL mode; the crop is converted to RGB).
        box_original: (x1, y1, x2, y2) in pixels of the original image. The integer crop bounds
            are floor(x1), floor(y1), ceil(x2), ceil(y2), clamped to the image.
        target_pixels: wanted area of the returned crop in pixels (e.g. profile.crop_pixels).
        factor: both output sides are multiples of this (28 for Qwen2.5-VL), at least `factor`.
        resample: PIL resampling filter for the resize (bicubic by default).
        min_pixels, max_pixels: optional processor pixel bounds; see :func:`crop_output_size`.

    Returns:
        ``image.crop(int box).convert("RGB").resize(crop_output_size(...), resample)``: an RGB
        image whose sides are multiples of `factor` and whose area is about `target_pixels`.

    Raises:
        ValueError when the integer box is empty after clamping (a programming error: boxes from
        :func:`parse_tool_call` are always inside the image).
    """
    W, H = image.size
    x1, y1, x2, y2 = (float(v) for v in box_original)
    ix1, iy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    ix2, iy2 = min(W, math.ceil(x2)), min(H, math.ceil(y2))
    if ix2 <= ix1 or iy2 <= iy1:
        raise ValueError(f"crop box {tuple(box_original)} is empty inside the {W}x{H} image")
    crop = image.crop((ix1, iy1, ix2, iy2)).convert("RGB")
    size = crop_output_size(ix2 - ix1, iy2 - iy1, target_pixels, factor, min_pixels, max_pixels)
    return crop.resize(size, resample)


def zoom(text: str, image: Image.Image, model_size: tuple[int, int], target_pixels: int,
         min_side: float = 28.0, pad_frac: float = 0.0, factor: int = 28,
         min_pixels: Optional[int] = None, max_pixels: Optional[int] = None
         ) -> tuple[ToolCall, Optional[Image.Image]]:
    """Run the zoom tool on a turn-1 text: parse the call, crop the original image.

    Args:
        text: the model's turn-1 output.
        image: the ORIGINAL image; its size is the original frame.
        model_size: (width, height) in pixels of the model-input image the model saw.
        target_pixels, factor, min_pixels, max_pixels: crop output size, see :func:`crop_image`.
        min_side, pad_frac: box clean-up in model-input pixels, see :func:`parse_tool_call`.

    Returns:
        (ToolCall, crop) where crop is None when the call is invalid. Never raises on model output.
    """
    call = parse_tool_call(text, model_size, image.size, min_side=min_side, pad_frac=pad_frac)
    if not call.ok:
        return call, None
    crop = crop_image(image, call.box_original, target_pixels, factor=factor,
                      min_pixels=min_pixels, max_pixels=max_pixels)
    return call, crop

"""Pixel frames, boxes and the crop: the one place that converts between original-image and model-input pixels.

Qwen2.5-VL resizes every image so both sides are multiples of 28 (patch 14 x merge 2) and
the area lies in [min_pixels, max_pixels]; it expects tool-call boxes in absolute pixels of
that *resized* image. Every box in the workbook's records is in original-image pixels;
dialogues, rewards and crops convert with the functions below and nowhere else. The crop of
the original image at a box (what the zoom tool returns) is here too, because the data folder
stores the crop of the true box that turn 2 of an SFT dialogue sees.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

Box = tuple[float, float, float, float]

# The smallest side of a zoom box, in model-input pixels: one merged visual token (patch 14 x merge 2).
# A tool call's box is enlarged to it before the crop (protocol.parse_tool_call, rl.zoom, the rollouts).
MIN_SIDE = 28.0


def model_input_size(width: int, height: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """Return (width, height) in pixels of the image the Qwen2.5-VL processor feeds the model.

    Uses the processor's own `smart_resize`, so it cannot drift from what the model sees.
    """
    h, w = smart_resize(int(height), int(width), factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(w), int(h)


def processor_pixel_bounds(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2.5-VL processor (or its image processor)."""
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    lo = size.get("shortest_edge", getattr(ip, "min_pixels", None))
    hi = size.get("longest_edge", getattr(ip, "max_pixels", None))
    return int(lo), int(hi)


def box_to_model(box: Sequence[float], original_size: tuple[int, int], model_size: tuple[int, int]) -> Box:
    """Scale a box from original-image pixels to model-input pixels. Sizes are (width, height)."""
    sx = model_size[0] / original_size[0]
    sy = model_size[1] / original_size[1]
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def box_to_original(box: Sequence[float], original_size: tuple[int, int], model_size: tuple[int, int]) -> Box:
    """Inverse of box_to_model: model-input pixels -> original-image pixels."""
    return box_to_model(box, model_size, original_size)


def round_box(box: Sequence[float]) -> list[int]:
    """Integer pixel box as written in a tool call."""
    return [int(round(v)) for v in box]


def model_box(box_original: Sequence[float], original_size: tuple[int, int],
              model_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer tool-call box in model-input pixels for a box in original-image pixels.

    Rounded, clamped to the model-input image, and kept at least 1 pixel wide and tall.

    >>> model_box((10.2, 20.0, 250.0, 256.0), (256, 256), (224, 224))
    (9, 18, 219, 224)
    """
    mw, mh = model_size
    x1, y1, x2, y2 = round_box(box_to_model(box_original, original_size, model_size))
    x1, x2 = min(max(x1, 0), mw - 1), min(max(x2, 0), mw)
    y1, y2 = min(max(y1, 0), mh - 1), min(max(y2, 0), mh)
    return (x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))


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


def clean_box(box: Sequence[float], size: tuple[float, float], min_side: float = 0.0,
              pad_frac: float = 0.0) -> tuple[Optional[Box], Optional[str]]:
    """Order the corners, clamp to the image, pad and enlarge a box: ``(box, None)`` or ``(None, reason)``.

    `box` and `size` (width, height) are in the same pixel frame. Reasons: "zero_area" (a side of
    length 0) and "outside_image" (no overlap with the image). Padding adds `pad_frac` of the
    clamped width / height on each side; then each side is enlarged to at least `min_side`
    (centred, shifted to stay inside, the whole axis when `min_side` exceeds it).

    >>> clean_box((30, 40, 10, 20), (100, 100))
    ((10.0, 20.0, 30.0, 40.0), None)
    >>> clean_box((10, 10, 12, 30), (100, 100), min_side=28)
    ((0.0, 6.0, 28.0, 34.0), None)
    """
    mw, mh = size
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    if x1 == x2 or y1 == y2:
        return None, "zero_area"
    if x2 <= 0 or y2 <= 0 or x1 >= mw or y1 >= mh:
        return None, "outside_image"
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(mw)), min(y2, float(mh))
    if pad_frac > 0:
        px, py = pad_frac * (x2 - x1), pad_frac * (y2 - y1)
        x1, y1 = max(0.0, x1 - px), max(0.0, y1 - py)
        x2, y2 = min(float(mw), x2 + px), min(float(mh), y2 + py)
    x1, x2 = _grow(x1, x2, float(min_side), mw)
    y1, y2 = _grow(y1, y2, float(min_side), mh)
    return (x1, y1, x2, y2), None


def clamp_box(box: Sequence[float], size: tuple[float, float]) -> Box:
    """Each coordinate of `box` clamped into the (width, height) image `size`."""
    w, h = size
    return (min(max(box[0], 0.0), float(w)), min(max(box[1], 0.0), float(h)),
            min(max(box[2], 0.0), float(w)), min(max(box[3], 0.0), float(h)))


def box_area(box: Sequence[float]) -> float:
    """Area in square pixels of an (x1, y1, x2, y2) box; 0 for degenerate boxes."""
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes in the same pixel frame, in [0, 1].

    >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    >>> iou((0, 0, 1, 1), (2, 2, 3, 3))
    0.0
    """
    if a is None or b is None:
        return 0.0
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = box_area((ix1, iy1, ix2, iy2))
    union = box_area(a) + box_area(b) - inter
    if union <= 0 or not math.isfinite(union):
        return 0.0
    return float(inter / union)


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
        target_pixels: wanted area of the returned crop in pixels (e.g. profile.rollout.crop_pixels).
        factor: both output sides are multiples of this (28 for Qwen2.5-VL), at least `factor`.
        resample: PIL resampling filter for the resize (bicubic by default).
        min_pixels, max_pixels: optional processor pixel bounds; see :func:`crop_output_size`.

    Returns:
        ``image.crop(int box).convert("RGB").resize(crop_output_size(...), resample)``: an RGB
        image whose sides are multiples of `factor` and whose area is about `target_pixels`.

    Raises:
        ValueError when the integer box is empty after clamping (a programming error: boxes from
        :func:`zoomdx_lib.protocol.parse_tool_call` are always inside the image).
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

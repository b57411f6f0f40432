"""Pixel frames and boxes: the one place that converts between original-image and model-input pixels.

Qwen2.5-VL resizes every image so both sides are multiples of 28 (patch 14 x merge 2) and
the area lies in [min_pixels, max_pixels]; it expects tool-call boxes in absolute pixels of
that *resized* image. Every box in the workbook's records is in original-image pixels;
dialogues, rewards and crops convert with the functions below and nowhere else.
"""
from __future__ import annotations

import math
from typing import Sequence

from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

Box = tuple[float, float, float, float]


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

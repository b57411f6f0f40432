"""The zoom tool that runs between the two turns: read the turn-1 call, crop the original image there.

The box is parsed by :func:`zoomdx_lib.protocol.parse_tool_call` (model-input pixels, cleaned and
converted to original pixels) and cropped by :func:`zoomdx_lib.geometry.crop_image` at the
original resolution, resized so the processor takes the crop as it is. A malformed call is data:
no crop, a counted error, zero format reward.
"""
from __future__ import annotations

from typing import Optional

from PIL import Image

from ..geometry import MIN_SIDE, crop_image
from ..protocol import ToolCall, parse_tool_call


def zoom(text: str, image: Image.Image, model_size: tuple[int, int], target_pixels: int,
         min_side: float = MIN_SIDE, pad_frac: float = 0.0, factor: int = 28,
         min_pixels: Optional[int] = None, max_pixels: Optional[int] = None
         ) -> tuple[ToolCall, Optional[Image.Image]]:
    """Run the zoom tool on a turn-1 text: parse the call, crop the original image.

    Args:
        text: the model's turn-1 output.
        image: the ORIGINAL image; its size is the original frame.
        model_size: (width, height) in pixels of the model-input image the model saw.
        target_pixels, factor, min_pixels, max_pixels: crop output size, see
            :func:`zoomdx_lib.geometry.crop_image`.
        min_side, pad_frac: box clean-up in model-input pixels, see
            :func:`zoomdx_lib.protocol.parse_tool_call`.

    Returns:
        (ToolCall, crop) where crop is None when the call is invalid. Never raises on model output.
    """
    call = parse_tool_call(text, model_size, image.size, min_side=min_side, pad_frac=pad_frac)
    if not call.ok:
        return call, None
    crop = crop_image(image, call.box_original, target_pixels, factor=factor,
                      min_pixels=min_pixels, max_pixels=max_pixels)
    return call, crop

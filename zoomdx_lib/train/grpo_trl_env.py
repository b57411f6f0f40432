"""The crop tool of the TRL GRPO engine (:mod:`zoomdx_lib.train.grpo_trl`) as a TRL environment, and the
prompt dataset TRL reads.

TRL makes one :class:`ZoomEnvironment` per rollout (``environment_factory``), calls ``reset(**row)`` with the
whole dataset row (``prompt``, ``image``, ``sample``) before generating, and ``zoom(bbox_2d=[...])`` when
turn 1 holds a tool call; the crop is cut by :func:`zoomdx_lib.rl.zoom.zoom` from the original image at the
model-input size the processor uses, exactly as in the explicit rollout.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import datasets
from PIL import Image

from ..geometry import MIN_SIDE, model_input_size, processor_pixel_bounds
from ..protocol import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ZOOM_TEXT, single_turn_messages
from ..rl.zoom import zoom

__all__ = ["ZoomEnvironment", "environment_factory", "prompt_dataset"]


class ZoomEnvironment:
    """One rollout's crop tool. TRL makes one per rollout, calls :meth:`reset` with the dataset row and
    :meth:`zoom` when turn 1 holds a tool call. Only the first call of a rollout can crop."""

    def __init__(self, pixel_bounds: tuple[int, int], crop_pixels: int, min_side: float = MIN_SIDE):
        self._bounds, self._crop_pixels, self._min_side = tuple(pixel_bounds), crop_pixels, min_side
        self.image: Image.Image | None = None
        self.sample = None
        self.calls: list = []          # ToolCall of every call this rollout made
        self.crop: Image.Image | None = None
        self.policy_mask: list[int] | None = None   # 1 on the model's own completion tokens (set by the trainer)

    def reset(self, image=None, sample=None, **row) -> None:
        """Start a rollout on a dataset row (TRL passes every column: ``prompt``, ``image``, ``sample``).
        Returns None: nothing is added to the prompt."""
        if image is None:
            raise ValueError(f"the dataset row has no 'image' (columns: {sorted(['sample', *row])})")
        self.image, self.sample = image.convert("RGB"), sample
        self.calls, self.crop, self.policy_mask = [], None, None

    @property
    def model_size(self) -> tuple[int, int]:
        """(width, height) of the image as the processor feeds it to the model."""
        return model_input_size(self.image.width, self.image.height, *self._bounds)

    def zoom(self, bbox_2d: list[int]) -> list[dict]:
        """Look closer: crop the lesion region of the ultrasound image and show it at a higher resolution.

        Args:
            bbox_2d: The region as [x1, y1, x2, y2] in pixels of the image as you see it.

        Returns:
            The zoomed view as an image, followed by its caption.
        """
        if self.calls:
            return [{"type": "text", "text": "Only one zoom per case."}]
        text = TOOL_CALL_OPEN + json.dumps({"bbox_2d": bbox_2d}) + TOOL_CALL_CLOSE
        lo, hi = self._bounds
        call, crop = zoom(text, self.image, self.model_size, self._crop_pixels, min_side=self._min_side,
                          min_pixels=lo, max_pixels=hi)
        self.calls.append(call)
        if not call.ok:
            return [{"type": "text", "text": f"No zoom: {call.error}."}]
        self.crop = crop
        return [{"type": "image", "image": crop}, {"type": "text", "text": ZOOM_TEXT}]


def environment_factory(processor, crop_pixels: int) -> Callable[[], ZoomEnvironment]:
    """The ``environment_factory``: environments for `processor`'s pixel bounds and crops of `crop_pixels`."""
    bounds = processor_pixel_bounds(processor)
    return lambda: ZoomEnvironment(bounds, crop_pixels)


def prompt_dataset(items: Sequence[tuple]) -> datasets.Dataset:
    """A `datasets.Dataset` over (sample, image) items whose rows are read lazily (a transform):
    ``prompt`` (the user turn: image + question, as the explicit rollout renders it), ``image``
    (RGB original) and ``sample`` (the :class:`~zoomdx_lib.schema.Sample`)."""
    items = list(items)

    def rows(batch):
        got = [items[i] for i in batch["row"]]
        return {"prompt": [single_turn_messages(s.question) for s, _ in got],
                "image": [img.convert("RGB") for _, img in got], "sample": [s for s, _ in got]}
    return datasets.Dataset.from_dict({"row": list(range(len(items)))}).with_transform(rows)

"""Reading real images and lesion masks, and boxes from masks (original-image pixels).

Any image (16-bit, RGBA, palette ...) becomes 8-bit RGB; a missing or corrupt file raises
:class:`~zoomdx_lib.schema.SampleError` naming the file. Boxes follow the pixel-edge convention: a
mask whose foreground spans columns 10..19 gives x1 = 10, x2 = 20.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..schema import SampleError

SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # ids usable as file names
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load_image(path) -> Image.Image:
    """Load any image as 8-bit RGB for the model; raise SampleError naming `path` if missing or corrupt.

    16-bit / 32-bit grayscale is scaled linearly to 0-255 by its own maximum (when that exceeds
    255; negative values clip to 0); an alpha channel is dropped; palette, 1-bit and L become RGB.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                a = np.asarray(im).astype(np.float64)
                hi = float(a.max()) if a.size else 0.0
                a = a * (255.0 / hi) if hi > 255 else a
                im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
            return im.convert("RGB")
    except FileNotFoundError:
        raise SampleError(f"{path}: image file is missing") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise SampleError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def load_mask(path) -> np.ndarray:
    """A binary lesion mask (H, W) bool: pixels above half the mask's maximum (alpha ignored)."""
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode in ("P", "1") else im)
    except FileNotFoundError:
        raise SampleError(f"{path}: mask file is missing") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise SampleError(f"{path}: cannot read mask ({type(e).__name__}: {e})") from None
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1)
    hi = float(a.max()) if a.size else 0.0
    return a > hi / 2 if hi > 0 else np.zeros(a.shape, bool)


def mask_to_boxes(mask: np.ndarray, all_components: bool = False) -> list[tuple[float, float, float, float]]:
    """Tight boxes (x1, y1, x2, y2) in pixels of the mask's image, pixel-edge convention (x2 = last column + 1).

    Connected components use 8-connectivity (scipy.ndimage.label). Returns the largest
    component's box (ties: first in raster order), or every component's box largest first when
    `all_components`; [] for an empty mask.
    """
    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), int))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = sorted(range(n), key=lambda k: (-sizes[k], k))
    slices = ndimage.find_objects(labels)
    boxes = [(float(slices[k][1].start), float(slices[k][0].start), float(slices[k][1].stop),
              float(slices[k][0].stop)) for k in order]
    return boxes if all_components else boxes[:1]

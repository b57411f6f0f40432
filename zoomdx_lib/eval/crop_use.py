"""Does the answer use the crop? Turn 2 answered from other crops than the model's own.

For each case the model's greedy turn 1 is kept (the same tool call for every source) and turn 2 is
answered from:

* ``own``        the crop of its own box (the method as it runs);
* ``true``       the crop of the true box;
* ``blank``      a uniform image at the original image's mean grey, of the own crop's size;
* ``elsewhere``  the crop of a box of the same size placed away from the lesion (IoU with the true box
                 below 0.1 where the image allows; drawn from a generator seeded by the case id).

If answers barely change between ``own`` and ``blank``, turn 2 reads the question and the full view,
not the crop: the zoom is redundant. :func:`crop_use_summary` gives accuracy per source (c = 1 cases and
all) and the share of answers that differ from ``own``.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageStat

from ..geometry import crop_image, iou
from ..config import Profile
from ..io import atomic_write_json, progress as progress_bar
from ..model.load import load_policy
from ..rl.rollout import HFPolicy, rollout
from .generate import Method, generation_fingerprint

CROP_SOURCES = ("own", "true", "blank", "elsewhere")


def elsewhere_box(true_box: Sequence[float], size: tuple[float, float], image_size: tuple[int, int], key: str,
                  max_iou: float = 0.1, tries: int = 64) -> tuple[float, float, float, float]:
    """A box of `size` (w, h original pixels) inside `image_size` away from `true_box` (IoU < `max_iou`,
    else the lowest-IoU draw); deterministic in `key`.

    >>> b = elsewhere_box((0, 0, 50, 50), (50, 50), (200, 200), "case-1")
    >>> iou(b, (0, 0, 50, 50)) < 0.1, round(b[2] - b[0], 6), round(b[3] - b[1], 6)
    (True, 50.0, 50.0)
    """
    W, H = image_size
    w, h = min(float(size[0]), W), min(float(size[1]), H)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    best, best_iou = None, 2.0
    for _ in range(tries):
        x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
        box = (float(x), float(y), float(x + w), float(y + h))
        overlap = iou(box, true_box)
        if overlap < best_iou:
            best, best_iou = box, overlap
        if overlap < max_iou:
            break
    return best


def substitute(source: str, crop_pixels: int):
    """The ``crop_fn`` of :func:`zoomdx_lib.rl.rollout.rollout` for one source (None for ``own``); every
    substitute has the own crop's size, so turn 2 sees as many image tokens."""
    if source not in CROP_SOURCES:
        raise ValueError(f"unknown crop source {source!r}; choose one of {CROP_SOURCES}")
    if source == "own":
        return None

    def fn(sample, image: Image.Image, call, crop: Image.Image) -> Image.Image:
        if source == "blank":
            grey = int(round(ImageStat.Stat(image.convert("L")).mean[0]))
            return Image.new("RGB", crop.size, (grey, grey, grey))
        box = sample.box
        if source == "elsewhere":
            x1, y1, x2, y2 = call.box_original
            box = elsewhere_box(sample.box, (x2 - x1, y2 - y1), image.size, sample.id)
        return crop_image(image, box, crop_pixels).resize(crop.size, Image.BICUBIC)
    return fn


def crop_use_records(model, processor, items, max_new_tokens: tuple[int, int], crop_pixels: int,
                     sources: Sequence[str] = CROP_SOURCES, batch_size: int = 16, progress: bool = True) -> dict:
    """{source: [{id, c, label, answer, tool_ok}]} from greedy rollouts of `items` [(sample, image)], turn 2
    answered from each source's crop (the answer is None when invalid or when turn 1 made no valid call)."""
    out = {s: [] for s in sources}
    for source in sources:
        fn = substitute(source, crop_pixels)
        for k in progress_bar(range(0, len(items), batch_size), progress, desc=f"crop use: {source}", leave=False):
            batch = items[k:k + batch_size]
            trajs = rollout(batch, HFPolicy(model, processor), processor, 1, False, 0.7, max_new_tokens,
                            crop_pixels, crop_fn=fn)
            out[source] += [dict(id=sample.id, c=sample.c, label=sample.label, answer=group[0].label,
                                 tool_ok=group[0].tool.ok) for (sample, _), group in zip(batch, trajs)]
    return out


def crop_use_summary(records: dict) -> list[dict]:
    """One row per source: n, accuracy on c = 1 cases and on all (0-1), and the share of cases with a valid
    tool call whose answer differs from the ``own`` answer (``changed``, 0 for ``own`` itself).

    >>> r = lambda i, a: dict(id=str(i), c=1, label="A", answer=a, tool_ok=True)
    >>> rows = crop_use_summary({"own": [r(0, "A"), r(1, "A")], "blank": [r(0, "A"), r(1, "B")]})
    >>> [(x["source"], x["acc_c1"], x["changed"]) for x in rows]
    [('own', 1.0, 0.0), ('blank', 0.5, 0.5)]
    """
    own = {r["id"]: r["answer"] for r in records.get("own", [])}
    rows = []
    for source, recs in records.items():
        c1 = [r for r in recs if r["c"] == 1]
        called = [r for r in recs if r["tool_ok"] and r["id"] in own]
        rows.append(dict(source=source, n=len(recs),
                         acc_c1=float(np.mean([r["answer"] == r["label"] for r in c1])) if c1 else float("nan"),
                         acc_all=float(np.mean([r["answer"] == r["label"] for r in recs])) if recs else float("nan"),
                         changed=float(np.mean([r["answer"] != own[r["id"]] for r in called])) if called else float("nan")))
    return rows


def crop_use_rows(methods: Sequence[Method], datasets: dict, profile: Profile, cache, n_cases: int,
                  progress: bool = True) -> list[dict]:
    """Crop-use rows (method, source, n, acc_c1, acc_all, changed) of every two-turn method on the first
    `n_cases` cases of ``test_liver`` and ``test_breast`` in `datasets`, cached as JSON at `cache`
    (name it with :func:`crop_use_cache_name` so retrained weights never reuse stale rows)."""
    cache = Path(cache)
    if cache.exists():
        return json.loads(cache.read_text())
    items = [it for name in ("test_liver", "test_breast") if name in datasets for it in datasets[name][:n_cases]]
    rows = []
    for m in (m for m in methods if m.kind == "zoom"):
        model, processor = load_policy(m.base, m.adapter, profile.device, **profile.model.pixel_bounds)
        recs = crop_use_records(model, processor, items, profile.rollout.max_new_tokens, profile.rollout.crop_pixels,
                                batch_size=profile.eval.batch_size, progress=progress)
        rows += [dict(method=m.name, **r) for r in crop_use_summary(recs)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, rows)
    return rows


def crop_use_cache_name(methods: Sequence[Method], profile: Profile, n_cases: int) -> str:
    """``crop_use_{n}_{digest}.json``: the digest covers each two-turn method's weights and the generation
    settings (:func:`zoomdx_lib.eval.generate.generation_fingerprint`)."""
    prints = [generation_fingerprint(m, "crop_use", 0, max_new_tokens=profile.rollout.max_new_tokens,
                                     crop_pixels=profile.rollout.crop_pixels) for m in methods if m.kind == "zoom"]
    digest = hashlib.sha256(json.dumps([n_cases] + prints).encode()).hexdigest()[:10]
    return f"crop_use_{n_cases}_{digest}.json"

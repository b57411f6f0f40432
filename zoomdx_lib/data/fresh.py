"""Fresh synthetic cases for evaluations that must not reuse any split's cases.

The workbook's splits draw their generators' seeds from ``store.split_seed(seed, split, organ)`` with
split names ``train`` and ``test_{organ}``. A fresh set uses its own split name (``fresh_{tag}``), so
its seeds and its ids (``{organ}-fresh_{tag}-NNNNN``) are disjoint from every split of every run;
nothing is written to disk.
"""
from __future__ import annotations

from typing import Sequence

from ..config import Profile
from .dialogue import question_for
from .store import split_seed
from .synth import generate_samples


def fresh_items(profile: Profile, organs: Sequence[str], n_per_organ: int, tag: str) -> list[tuple]:
    """(Sample, PIL image) pairs: `n_per_organ` fresh cases of each organ in `organs`, drawn exactly as
    the profile's test splits are (image size, attributes, questions) but from the split ``fresh_{tag}``.

    Raises ValueError when `tag` would name one of the workbook's own splits.
    """
    split = f"fresh_{tag}"
    if tag in ("", "train") or tag.startswith("test"):
        raise ValueError(f"fresh tag {tag!r} would reuse a split's seeds; use another tag")
    items = []
    for organ in organs:
        for sample, image in generate_samples(organ, n_per_organ, seed=split_seed(profile.seed, split, organ),
                                              size=profile.data.image_size, attributes=profile.data.attributes,
                                              split=split):
            sample.question = question_for(sample.attribute, f"{profile.seed}:{sample.id}")
            sample.validate()
            items.append((sample, image))
    return items

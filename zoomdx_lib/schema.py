"""The sample record every part of the workbook passes around, and the label vocabulary.

A sample is the paper's tuple (I, b, y, c) plus what a researcher needs to trace it:
which organ, which attribute the question asks about, both raters' labels, and the
latent difficulty when the case is synthetic.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

# Canonical labels per diagnostic attribute (the answer JSON key is the attribute name).
ATTRIBUTE_LABELS: dict[str, tuple[str, ...]] = {
    "echo": ("Anechoic", "Hypoechoic", "Isoechoic", "Hyperechoic"),
    "shape": ("Oval", "Round", "Irregular"),
    "margin": ("Circumscribed", "Not circumscribed"),
}
ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_LABELS)
ORGANS: tuple[str, ...] = ("liver", "breast", "thyroid")


class SampleError(ValueError):
    """A record that cannot become a sample; the message names the record and the problem."""


@dataclass
class Sample:
    """One VQA case.

    Attributes:
        id: unique id within its dataset.
        image_path: path of the image file, relative to the dataset root (or absolute).
        box: lesion box (x1, y1, x2, y2) in pixels of the *original* image, x right, y down.
        attribute: which attribute the question asks about (a key of ATTRIBUTE_LABELS).
        label: ground-truth canonical label y of that attribute.
        c: sonographer confidence, 1 = the two raters agree (consensus), 0 = they disagree.
        organ: "liver", "breast", "thyroid" or a dataset-specific name.
        question: the user question text.
        rater_labels: the two raters' labels when known (same vocabulary as label).
        difficulty: latent difficulty in [0, 1] for synthetic cases (None for real data).
        image_size: (width, height) of the original image in pixels, when known.
        split: split name ("train", "test_liver", ...).
        meta: free-form extra fields (importer provenance, synthetic ground truth).
    """

    id: str
    image_path: str
    box: tuple[float, float, float, float]
    attribute: str
    label: str
    c: int
    organ: str
    question: str
    rater_labels: Optional[tuple[str, str]] = None
    difficulty: Optional[float] = None
    image_size: Optional[tuple[int, int]] = None
    split: str = ""
    meta: dict = field(default_factory=dict)

    def validate(self) -> "Sample":
        """Check the label vocabulary, c and the box; raise SampleError naming this record."""
        where = f"sample {self.id!r}"
        if self.attribute not in ATTRIBUTE_LABELS:
            raise SampleError(f"{where}: unknown attribute {self.attribute!r}; expected one of {ATTRIBUTES}")
        if self.label not in ATTRIBUTE_LABELS[self.attribute]:
            raise SampleError(
                f"{where}: unknown {self.attribute} label {self.label!r}; "
                f"expected one of {ATTRIBUTE_LABELS[self.attribute]}")
        if self.c not in (0, 1):
            raise SampleError(f"{where}: confidence c must be 0 or 1, got {self.c!r}")
        if len(self.box) != 4:
            raise SampleError(f"{where}: box must have 4 numbers, got {self.box!r}")
        x1, y1, x2, y2 = self.box
        if not (x2 > x1 and y2 > y1):
            raise SampleError(f"{where}: box {self.box} has zero or negative area")
        if self.image_size is not None:
            w, h = self.image_size
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                raise SampleError(f"{where}: box {self.box} lies outside the {w}x{h} image")
        return self

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Sample":
        """Inverse of to_dict."""
        d = dict(d)
        d["box"] = tuple(float(v) for v in d["box"])
        if d.get("rater_labels") is not None:
            d["rater_labels"] = tuple(d["rater_labels"])
        if d.get("image_size") is not None:
            d["image_size"] = tuple(int(v) for v in d["image_size"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

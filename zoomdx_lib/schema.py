"""The sample record every part of the workbook passes around, and the label vocabulary.

A sample is the paper's tuple (I, b, y, c) plus what a researcher needs to trace it:
which organ, which attribute the question asks about, both raters' labels, and the
latent difficulty when the case is synthetic. The vocabulary is the canonical label set per
attribute and the one normaliser that maps spellings and synonyms onto it (used for model
answers and for the labels of imported data alike).
"""
from __future__ import annotations

import dataclasses
import re
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


# Synonyms per attribute, written in "compact" form: lower case, no spaces, hyphens or
# underscores (see _compact). The canonical labels themselves are added below.
_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "echo": {
        "Anechoic": ("anechoic", "anechogenic", "cystic", "noecho", "echofree"),
        "Hypoechoic": ("hypoechoic", "hypoechogenic", "lowecho", "markedlyhypoechoic", "veryhypoechoic"),
        "Isoechoic": ("isoechoic", "isoechogenic", "isoecho"),
        "Hyperechoic": ("hyperechoic", "hyperechogenic", "highecho"),
    },
    "shape": {
        "Oval": ("oval", "ovoid", "ellipse", "elliptical", "elliptic", "ellipsoid"),
        "Round": ("round", "rounded", "circular", "circle"),
        "Irregular": ("irregular",),
    },
    "margin": {
        "Circumscribed": ("circumscribed", "wellcircumscribed", "welldefined", "smooth"),
        "Not circumscribed": ("notcircumscribed", "noncircumscribed", "uncircumscribed", "illdefined",
                              "poorlydefined", "indistinct", "spiculated", "microlobulated", "angular"),
    },
}

_STRIP = " \t\r\n.,;:!?\"'`()[]{}*"


def _compact(s: str) -> str:
    """Lower case, surrounding punctuation removed, no whitespace, hyphens or underscores."""
    s = s.strip(_STRIP).lower()
    return re.sub(r"[\s\-_\u2010-\u2015]+", "", s)


_LOOKUP: dict[str, dict[str, str]] = {
    attr: {_compact(v): label for label in labels for v in (label, *_SYNONYMS[attr].get(label, ()))}
    for attr, labels in ATTRIBUTE_LABELS.items()}


def check_attribute(attribute) -> str:
    """`attribute` when it is a key of ATTRIBUTE_LABELS; ValueError naming the choices otherwise."""
    if not isinstance(attribute, str) or attribute not in ATTRIBUTE_LABELS:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")
    return attribute


# "Parent - subtype(s)": BI-RADS writes e.g. "Not circumscribed - indistinct, angular".
_PARENT_SEP = re.compile(r"\s+[-\u2010-\u2015]\s+|\s*[:(]\s*")
_LIST_SEP = re.compile(r"\s*(?:[/,;+&]|\band\b|\bor\b)\s*", re.IGNORECASE)


def _lookup(value: str, attribute: str) -> Optional[str]:
    return _LOOKUP[attribute].get(_compact(value))


def _common_label(pieces, attribute: str) -> Optional[str]:
    """The one label every non-empty piece names, or None (a piece naming nothing, or two labels)."""
    labels = {_lookup(p, attribute) for p in pieces if _compact(p)}
    return labels.pop() if len(labels) == 1 and None not in labels else None


def normalise_label(value, attribute: str) -> Optional[str]:
    """The canonical label of `attribute` that `value` names, or None.

    Case, surrounding whitespace/punctuation, hyphens and underscores are ignored and common
    synonyms are mapped ("hypo-echoic" -> "Hypoechoic", "ill-defined" -> "Not circumscribed").
    The BI-RADS lexicon's subtypes go to their parent category, in any combination:
    "Not circumscribed - indistinct, angular", "spiculated/microlobulated" -> "Not circumscribed".
    A value whose parts name different labels, or that has no parent in the vocabulary
    ("heterogeneous", "complex cystic and solid", "not applicable"), gives None. Non-strings give
    None. Raises ValueError for an unknown attribute.

    >>> normalise_label("hypo-echoic", "echo")
    'Hypoechoic'
    >>> normalise_label("Ill defined", "margin")
    'Not circumscribed'
    >>> normalise_label("not circumscribed - angular / spiculated", "margin")
    'Not circumscribed'
    >>> normalise_label("oval", "echo") is None, normalise_label("heterogeneous", "echo") is None
    (True, True)
    """
    check_attribute(attribute)
    if not isinstance(value, str):
        return None
    label = _lookup(value, attribute)
    if label is not None:
        return label
    head, *tail = _PARENT_SEP.split(value.strip(), maxsplit=1)
    parent = _lookup(head, attribute) if tail else _common_label(_LIST_SEP.split(head), attribute)
    if parent is None or not tail:
        return parent
    subtypes = [p for p in _LIST_SEP.split(tail[0].rstrip(")")) if _compact(p)]
    return parent if all(_lookup(p, attribute) == parent for p in subtypes) else None


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

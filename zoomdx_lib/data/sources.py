"""One name for any data set the commands evaluate or fine-tune on, and the cases it gives.

A data SPEC is one of

    liver | breast | thyroid      fresh synthetic cases of that organ (a generator seed picks them)
    bus_bra:PATH                  BUS-BRA (bus_data.csv, Images/, Masks/; folds from 5-fold-cv.csv)
    busi:PATH                     a BUSI-style folder (benign/, malignant/, ... with *_mask.png)
    manifest:PATH                 a CSV / JSONL manifest (see :func:`zoomdx_lib.data.importers.import_manifest`)

Relative PATHs are under ``$ZOOMDX_DATA`` (:func:`zoomdx_lib.config.data_path`). :func:`load_cases`
returns (sample, RGB image) pairs, each sample with a question about its attribute; boxes are in
original-image pixels. :func:`split_cases` splits them by folds or by a fraction with a seed, keeping a
patient's cases on one side where the data names patients.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import data_path
from .dialogue import question_for
from .images import load_image
from .import_report import ImportReport
from .importers import IMPORTERS
from .synth import ORGAN_PRESETS, generate_samples

REAL_KINDS = ("bus_bra", "busi", "manifest")
PATIENT_KEYS = ("patient", "case")   # meta keys naming a case's patient: a manifest's patient column, BUS-BRA's Case
FOLD_KEYS = ("fold", "kfold")        # meta keys naming a case's fold: a manifest's fold column, BUS-BRA's kFold


@dataclass(frozen=True)
class DataSpec:
    """A parsed data SPEC: `kind` ("synthetic" or one of REAL_KINDS), the synthetic `organ`, or the
    real data set's resolved `path`; `text` is the SPEC as written."""

    kind: str
    text: str
    organ: Optional[str] = None
    path: Optional[Path] = None

    @classmethod
    def parse(cls, text: str) -> "DataSpec":
        """A SPEC string (see the module docstring); ValueError naming the forms when it is none of them.

        >>> DataSpec.parse("liver").kind, DataSpec.parse("busi:/data/busi").path.name
        ('synthetic', 'busi')
        """
        text = str(text).strip()
        if text in ORGAN_PRESETS:
            return cls("synthetic", text, organ=text)
        kind, sep, rest = text.partition(":")
        if not sep or kind not in REAL_KINDS or not rest:
            raise ValueError(f"data {text!r}: expected a synthetic organ ({', '.join(sorted(ORGAN_PRESETS))}) "
                             f"or bus_bra:PATH, busi:PATH, manifest:PATH (relative paths are under $ZOOMDX_DATA)")
        return cls(kind, text, path=data_path(rest))

    @property
    def root(self) -> Optional[Path]:
        """The folder the samples' image paths are relative to (the manifest's folder for a manifest)."""
        if self.path is None:
            return None
        return self.path.parent if self.kind == "manifest" else self.path


def read_label_map(value) -> Optional[dict]:
    """A label map from inline JSON (``'{"benign": "Circumscribed"}'``) or a JSON file (relative
    paths: the working folder first, then ``$ZOOMDX_DATA``); None for None or "".

    >>> read_label_map('{"benign": "Circumscribed"}')
    {'benign': 'Circumscribed'}
    """
    if value in (None, ""):
        return None
    if isinstance(value, dict):
        return value
    text = str(value).strip()
    if not text.startswith("{"):
        path = Path(text) if Path(text).exists() else data_path(text)
        if not path.exists():
            raise FileNotFoundError(f"label map {text!r}: neither inline JSON nor a file ({path})")
        text = path.read_text(encoding="utf-8")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"label map {value!r} is not valid JSON ({e})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"label map {value!r} must be a JSON object {{raw label: canonical label}}")
    return {str(k): str(v) for k, v in mapping.items()}


def synthetic_cases(organ: str, n: int, seed: int, size: int) -> list[tuple]:
    """`n` (sample, RGB image) pairs of `organ` from the generator with `seed` (images `size` pixels
    square), each with its question; the same cases :mod:`zoomdx_lib.eval.grounding` always used."""
    items = []
    for sample, image in generate_samples(organ, n, seed=seed, size=size, split="grounding"):
        sample.question = question_for(sample.attribute, f"{seed}:{sample.id}")
        items.append((sample, image.convert("RGB")))
    return items


def _question_seed(kind: str) -> str:
    return "busbra" if kind == "bus_bra" else kind


def import_real(spec: DataSpec, folds: Optional[Sequence[int]] = None, label_map: Optional[dict] = None,
                strict: bool = False, limit: Optional[int] = None) -> tuple[list, ImportReport]:
    """(samples, ImportReport) of a real SPEC: the importer of its kind, at most `limit` samples, only
    `folds` (BUS-BRA's kFold, a manifest's fold column) when given. `strict` raises
    :class:`~zoomdx_lib.data.import_report.ImportProblems` listing every bad record."""
    if spec.kind not in REAL_KINDS:
        raise ValueError(f"data {spec.text!r} is synthetic: it has no importer")
    if not spec.path.exists():
        raise FileNotFoundError(f"data {spec.text!r}: {spec.path} does not exist (relative paths are under "
                                f"$ZOOMDX_DATA; docs/data.md says how to bring a data set)")
    options = {"strict": strict}
    if label_map is not None:
        options["label_map"] = label_map
    if spec.kind == "bus_bra":
        options.update(folds=folds, limit=limit)
    elif folds is None:
        options["limit"] = limit
    samples, report = IMPORTERS[spec.kind](spec.path, **options)
    if folds is not None and spec.kind != "bus_bra":
        samples = [s for s in samples if fold_of(s) in set(folds)][:limit]
    return samples, report


def load_cases(spec, n: Optional[int] = None, seed: int = 0, image_size: int = 256,
               folds: Optional[Sequence[int]] = None, label_map: Optional[dict] = None,
               strict: bool = False) -> tuple[list, Optional[ImportReport]]:
    """((sample, RGB image) pairs, ImportReport or None) of a SPEC (a string or :class:`DataSpec`).

    Synthetic: `n` fresh cases (default 64) with generator `seed` at `image_size` pixels, no report.
    Real: the first `n` cases (all when None) of `folds` (all when None), each with a question
    about its attribute (a manifest's own question is kept); ValueError when none is left.
    """
    spec = spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)
    if spec.kind == "synthetic":
        if folds is not None:
            raise ValueError(f"data {spec.text!r} is synthetic: it has no folds (split it by a fraction)")
        return synthetic_cases(spec.organ, 64 if n is None else n, seed, image_size), None
    samples, report = import_real(spec, folds, label_map, strict, n)
    if not samples:
        raise ValueError(f"data {spec.text!r}: no case" + (f" in folds {list(folds)}" if folds is not None else "")
                         + f" ({report.summary()})")
    items = []
    for s in samples:
        s.question = s.question or question_for(s.attribute, f"{_question_seed(spec.kind)}:{s.id}")
        items.append((s, load_image(spec.root / s.image_path)))
    return items, report


def patient_of(sample) -> str:
    """The patient a sample belongs to (meta "patient" or "case"), or the sample's own id."""
    for key in PATIENT_KEYS:
        if sample.meta.get(key) not in (None, ""):
            return f"patient:{sample.meta[key]}"
    return f"case:{sample.id}"


def fold_of(sample) -> Optional[int]:
    """The fold a sample belongs to (meta "fold" or "kfold"), or None."""
    for key in FOLD_KEYS:
        if sample.meta.get(key) not in (None, ""):
            return int(sample.meta[key])
    return None


def fraction_split(items: Sequence[tuple], train: float, test: float, seed: int = 0) -> tuple[list, list, dict]:
    """(train items, test items, info): the patients (:func:`patient_of`) shuffled with `seed`, the
    first `test` fraction of them to test and the next `train` fraction to train (fractions of
    patients, 0-1, summing to at most 1); info has the patient and case counts per side. Both sides
    keep the items' order.

    >>> from zoomdx_lib.schema import Sample
    >>> items = [(Sample(id=str(i), image_path="", box=(0, 0, 1, 1), attribute="echo", label="Anechoic", c=1,
    ...                  organ="breast", question="", meta={"patient": i // 2}), None) for i in range(8)]
    >>> tr, te, info = fraction_split(items, 0.75, 0.25, seed=1)
    >>> len(tr), len(te), info["patients"]
    (6, 2, {'train': 3, 'test': 1})
    """
    if not (0 < test < 1 and 0 < train <= 1 and train + test <= 1 + 1e-9):
        raise ValueError(f"split fractions train={train}, test={test}: each in (0, 1], at most 1 together")
    patients = list(dict.fromkeys(patient_of(s) for s, _ in items))
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    n_test = max(1, round(test * len(patients)))
    n_train = min(len(patients) - n_test, max(1, round(train * len(patients))))
    if n_train < 1:
        raise ValueError(f"{len(patients)} patients cannot be split into train and test")
    side = {p: "test" for p in order[:n_test]} | {p: "train" for p in order[n_test:n_test + n_train]}
    tr = [it for it in items if side.get(patient_of(it[0])) == "train"]
    te = [it for it in items if side.get(patient_of(it[0])) == "test"]
    info = dict(patients=dict(train=n_train, test=n_test), cases=dict(train=len(tr), test=len(te)),
                by="patient" if any(p.startswith("patient:") for p in patients) else "case")
    return tr, te, info

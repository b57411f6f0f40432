"""What an import did, and the validation every importer shares (:mod:`zoomdx_lib.data.importers`).

An importer walks its records through :class:`RecordImporter`: each record either becomes samples
or lands in the report with its problem. Nothing stops at the first bad record: with
``strict=True`` the importer raises one :class:`ImportProblems` at the end, with the count per kind
of problem and the first 20 records (line, id, problem); with ``strict=False`` it returns the good
samples and the report lists the rest.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..schema import ATTRIBUTE_LABELS, Sample, SampleError, normalise_label
from .images import SAFE_ID, load_image

SHOWN_PROBLEMS = 20   # records an ImportProblems error spells out

# (pattern in the problem text, kind): the first match names a problem's kind in the counts
_KINDS = (
    (r"image file is missing|no image path", "missing image"),
    (r"mask file is missing|no mask file", "missing mask"),
    (r"cannot read image", "unreadable image"),
    (r"cannot read mask", "unreadable mask"),
    (r"outside the \d+x\d+ image", "box outside the image"),
    (r"zero-area|zero or negative area", "zero-area box"),
    (r"box must", "malformed box"),
    (r"but the image is", "mask and image sizes differ"),
    (r"unknown \w+ label|unknown label", "unknown label"),
    (r"unknown attribute", "unknown attribute"),
    (r"duplicate id", "duplicate id"),
    (r"not usable as a file name", "unusable id"),
    (r"escapes the dataset root", "path outside the dataset root"),
    (r"is not a manifest column", "wrong column name"),
    (r"bad JSON", "bad JSON line"),
    (r"BI-RADS", "unknown BI-RADS category"),
    (r"c must be|needs a c column", "bad confidence c"),
    (r"no label", "no label"),
)


def problem_kind(problem: str) -> str:
    """The short kind of a problem message ("missing image", "unknown label" ...), for counting.

    >>> problem_kind("img/a.png: image file is missing")
    'missing image'
    >>> problem_kind("sample 'x': box (1, 2, 900, 30) lies outside the 80x60 image")
    'box outside the image'
    """
    for pattern, kind in _KINDS:
        if re.search(pattern, problem):
            return kind
    return "other"


@dataclass
class ImportReport:
    """What an importer did.

    Attributes:
        source: the dataset that was read.
        n_ok: number of samples returned.
        problems: (record, problem) of bad records (skipped with strict=False; raised together with strict=True).
        notes: (record, reason) of records skipped by design (no lesion, image not in this copy, column not read).
        unknown_labels: Counter of (attribute, raw label) for labels with no parent in the
            vocabulary (e.g. the BI-RADS echo pattern "heterogeneous"); their records are in problems.
        kept: Counter of samples returned per attribute.
        over_limit: Counter per attribute of records not read because a limit was reached.
    """

    source: str
    n_ok: int = 0
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    unknown_labels: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    over_limit: Counter = field(default_factory=Counter)

    def problem_counts(self) -> Counter:
        """Counter of problem kinds (:func:`problem_kind`) over the bad records."""
        return Counter(problem_kind(p) for _, p in self.problems)

    def dropped(self) -> dict:
        """Why records were not kept: ``{"bad": {kind: n}, "by_design": {reason: n}, "over_limit": {attribute: n}}``."""
        return {"bad": dict(self.problem_counts().most_common()),
                "by_design": dict(Counter(reason for _, reason in self.notes).most_common()),
                "over_limit": dict(sorted(self.over_limit.items()))}

    def summary(self) -> str:
        """One line: how many records were kept (per attribute) and dropped, and why."""
        kept = ", ".join(f"{a} {n}" for a, n in sorted(self.kept.items()))
        line = f"{self.source}: {self.n_ok} samples" + (f" ({kept})" if kept else "")
        line += f", {len(self.problems)} bad records skipped"
        if self.problems:
            line += " (" + ", ".join(f"{k} x{n}" for k, n in self.problem_counts().most_common()) + ")"
        line += f", {len(self.notes)} records skipped by design"
        if self.over_limit:
            line += f", {sum(self.over_limit.values())} not read (limit reached: " + ", ".join(
                f"{a} {n}" for a, n in sorted(self.over_limit.items())) + ")"
        if self.unknown_labels:
            line += "; labels with no parent in the vocabulary: " + ", ".join(
                f"{a} {raw!r} x{n}" for (a, raw), n in self.unknown_labels.most_common())
        return line

    def label_rows(self) -> list[dict]:
        """{attribute, label, count} of every label that maps to no canonical label, most frequent first."""
        return [dict(attribute=a, label=raw, count=n) for (a, raw), n in self.unknown_labels.most_common()]


class ImportProblems(SampleError):
    """A strict import found bad records: all of them are in ``problems`` ((record, problem) pairs)
    and in ``report``; the message gives the count per kind of problem and the first 20 records."""

    def __init__(self, report: ImportReport):
        self.report, self.problems = report, list(report.problems)
        counts = ", ".join(f"{k}: {n}" for k, n in report.problem_counts().most_common())
        lines = [f"{report.source}: {len(self.problems)} bad records ({counts}); "
                 f"fix them, or import with strict=False to keep the {report.n_ok} good ones"]
        lines += [f"  {record}: {problem}" for record, problem in self.problems[:SHOWN_PROBLEMS]]
        if len(self.problems) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(self.problems) - SHOWN_PROBLEMS} more (report.problems lists every one)")
        super().__init__("\n".join(lines))


class RecordImporter:
    """Shared validation: path under root, image readable, box/label valid, ids unique; limits; the report.

    `limit` caps the samples in total and `limit_per_attribute` per attribute (records past a limit
    are counted in ``report.over_limit``, not read); `strict` makes :meth:`done` raise
    :class:`ImportProblems` when any record was bad.
    """

    def __init__(self, root, strict: bool, source: str, label_map: Optional[dict] = None,
                 limit: Optional[int] = None, limit_per_attribute: Optional[int] = None):
        self.root, self.strict = Path(os.path.abspath(root)), strict
        self.report, self.samples, self.ids = ImportReport(source), [], set()
        self.label_map = {str(k).strip().lower(): v for k, v in (label_map or {}).items()}
        self.limit, self.limit_per_attribute = limit, limit_per_attribute

    def peek(self, raw, attribute: str) -> Optional[str]:
        """The canonical label of a raw label (through `label_map`, case-insensitive, then the
        vocabulary's normaliser), or None."""
        return normalise_label(self.label_map.get(str(raw).strip().lower(), raw), attribute)

    def label(self, raw, attribute: str) -> str:
        """:meth:`peek`, but a label that maps to nothing is counted in the report and rejected."""
        label = self.peek(raw, attribute)
        if label is None:
            self.report.unknown_labels[(attribute, str(raw))] += 1
            raise SampleError(f"unknown {attribute} label {raw!r}: no parent in {ATTRIBUTE_LABELS[attribute]} "
                              f"(map it with label_map=)")
        return label

    def resolve(self, rel) -> tuple[Path, str]:
        """(absolute path, path relative to root); SampleError if it escapes the root."""
        p = Path(str(rel))  # lexical check: ".." and absolute paths must stay under root (symlinks allowed)
        full = Path(os.path.normpath(p if p.is_absolute() else self.root / p))
        if not full.is_relative_to(self.root):
            raise SampleError(f"path {str(rel)!r} escapes the dataset root {self.root}")
        return full, full.relative_to(self.root).as_posix()

    def image_size(self, rel) -> tuple[str, tuple[int, int]]:
        """(path relative to root, (width, height) in pixels) of an image; SampleError if unreadable."""
        full, rel = self.resolve(rel)
        return rel, load_image(full).size

    def take(self, attribute: str) -> bool:
        """Whether a record of `attribute` may still be read; False (counted in ``report.over_limit``)
        once the total or the per-attribute limit is reached."""
        full = (self.limit is not None and self.report.n_ok >= self.limit) or (
            self.limit_per_attribute is not None and self.report.kept[attribute] >= self.limit_per_attribute)
        if full:
            self.report.over_limit[attribute] += 1
        return not full

    def sample(self, **kw) -> Sample:
        """A validated Sample; a normalised label, a fresh id, and the box inside the image."""
        attr = kw["attribute"]
        if attr not in ATTRIBUTE_LABELS:
            raise SampleError(f"unknown attribute {attr!r}; expected one of {tuple(ATTRIBUTE_LABELS)}")
        kw["label"] = self.label(kw["label"], attr)
        if kw.get("rater_labels"):
            kw["rater_labels"] = tuple(self.label(r, attr) for r in kw["rater_labels"])
        if not SAFE_ID.fullmatch(kw["id"]):
            raise SampleError(f"id {kw['id']!r} is not usable as a file name (letters, digits, _ - .)")
        if kw["id"] in self.ids:
            raise SampleError(f"duplicate id {kw['id']!r}")
        return Sample(**kw).validate()

    def add(self, record: str, build) -> None:
        """Run build() -> list[Sample]; a SampleError puts (record, problem) in the report and skips the record."""
        try:
            new = build()
            if len({s.id for s in new}) != len(new):
                raise SampleError("duplicate ids within the record")
        except SampleError as e:
            self.report.problems.append((record, str(e)))
            return
        self.ids.update(s.id for s in new)
        self.samples.extend(new)
        self.report.n_ok += len(new)
        self.report.kept.update(s.attribute for s in new)

    def done(self):
        """(samples, report); with `strict`, :class:`ImportProblems` listing every bad record instead."""
        if self.strict and self.report.problems:
            raise ImportProblems(self.report)
        return self.samples, self.report

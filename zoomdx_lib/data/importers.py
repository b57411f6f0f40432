"""Importers for real ultrasound data: BUSI folders, BUS-BRA, and generic CSV / JSONL manifests.

Long because each of the three importers reads its own layout (the validation they share is in
:mod:`zoomdx_lib.data.import_report`).

``import_busi`` reads ``root/{class}/{name}.png`` with ``{name}_mask.png`` masks;
``import_bus_bra`` reads BUS-BRA's ``bus_data.csv``, ``Images/`` and ``Masks/``;
``import_manifest`` reads one sample per row of a CSV / JSONL manifest (image, box or x1..y2,
attribute, label, c or rater_a / rater_b). Each returns ``(samples, ImportReport)`` with boxes in
original-image pixels, pixel-edge convention (``mask_to_boxes``), and ``image_path`` relative to
the dataset root. Images and masks are read by :mod:`zoomdx_lib.data.images`.

Validation (shared by every importer, :mod:`zoomdx_lib.data.import_report`): a bad record (missing /
corrupt image or mask, box outside the image or of zero area, unknown attribute or label, duplicate
id, id unusable as a file name, path escaping the dataset root, a manifest column with a misspelt
name) is collected with its problem; ``strict=True`` then raises one
:class:`~zoomdx_lib.data.import_report.ImportProblems` with the count per kind of problem and the first
20 records (line, id, problem); with ``strict=False`` the good records are returned and
``report.problems`` lists the rest. Records skipped by design (no-lesion class, image not in this
copy) go to ``report.notes``; ``limit`` (in total) and ``limit_per_attribute`` stop reading records,
and ``report.over_limit`` counts the ones not read.

Proxies: BUSI and BUS-BRA have no margin annotation, so the default label map for attribute
"margin" is ``MARGIN_PROXY`` (benign -> Circumscribed, malignant -> Not circumscribed). BUS-BRA
has one reader, so its c is the PROXY :func:`birads_confidence` (BI-RADS reading vs biopsy) and
its rater_labels are (reader's label, biopsy label); BUSI gets c = ``default_c``.
"""
from __future__ import annotations

import csv
import json
import re
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..schema import ATTRIBUTE_LABELS, SampleError
from .images import IMAGE_EXTS, SAFE_ID, load_image, load_mask, mask_to_boxes  # noqa: F401 (load_image: notebooks)
from .import_report import ImportProblems, ImportReport, RecordImporter  # noqa: F401 (part of this module's API)

# Proxy label maps from a malignancy class to a margin label (NOT a margin annotation: malignant
# breast lesions are mostly non-circumscribed and benign ones mostly circumscribed, BI-RADS lexicon).
MARGIN_PROXY: dict[str, str] = {"benign": "Circumscribed", "malignant": "Not circumscribed"}


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "sample"


def _boxes_from_masks(imp: RecordImporter, mask_rels, size, all_components: bool):
    union = None
    for m in mask_rels:
        full, rel = imp.resolve(m)
        a = load_mask(full)
        if a.shape != (size[1], size[0]):
            raise SampleError(f"mask {rel} is {a.shape[1]}x{a.shape[0]} but the image is {size[0]}x{size[1]}")
        union = a if union is None else (union | a)
    boxes = mask_to_boxes(union, all_components) if union is not None else []
    if not boxes:
        raise SampleError("empty mask: zero-area box")
    return boxes


def _label_map(label_map: Optional[dict], attribute: str, dataset: str) -> dict:
    if label_map is not None:
        return {str(k).lower(): v for k, v in label_map.items()}
    if attribute != "margin":
        raise ValueError(f"{dataset}: no default class -> {attribute!r} label map; pass label_map=")
    return dict(MARGIN_PROXY)


def import_busi(root, attribute: str = "margin", organ: str = "breast", strict: bool = True,
                label_map: Optional[dict] = None, default_c: int = 1, all_components: bool = False,
                skip_classes: tuple = ("normal",), limit: Optional[int] = None,
                limit_per_attribute: Optional[int] = None):
    """Import a BUSI-style folder: ``root/{class}/{name}.png`` with ``{name}_mask.png`` (+ ``_mask_1`` ...).

    Box: the union of an image's masks, then the largest 8-connected component's tight box in
    original-image pixels; ``all_components=True`` gives one sample per connected lesion (ids get
    ``_c1``, ``_c2`` ... when there are several). Label: ``label_map[class]`` (class folder name,
    case-insensitive); the default for attribute "margin" is the PROXY ``MARGIN_PROXY``
    (benign -> Circumscribed, malignant -> Not circumscribed), which is not a margin annotation.
    BUSI has no rater agreement, so every sample gets c = `default_c` (1: treated as consensus).
    Classes in `skip_classes` (no lesion) are skipped and listed in ``report.notes``; `limit` (or
    `limit_per_attribute`: the same, one attribute) stops after that many samples. Returns
    (samples, ImportReport); ids are the sanitised file stems, image_path relative to root.
    """
    lmap = _label_map(label_map, attribute, "import_busi")
    imp = RecordImporter(root, strict, f"BUSI {root}", limit=limit, limit_per_attribute=limit_per_attribute)
    if not imp.root.is_dir():
        raise FileNotFoundError(f"BUSI root {imp.root} is not a directory")
    for cdir in sorted(d for d in imp.root.iterdir() if d.is_dir()):
        cls = cdir.name
        files = sorted(f for f in cdir.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        for img in (f for f in files if not re.search(r"_mask(_\d+)?$", f.stem)):
            record = f"{cls}/{img.name}"
            if cls.lower() in skip_classes:
                imp.report.notes.append((record, f"class {cls!r}: no lesion, skipped"))
                continue
            if not imp.take(attribute):
                continue
            pat = re.compile(re.escape(img.stem) + r"_mask(_\d+)?")
            masks = [f"{cls}/{m.name}" for m in files if pat.fullmatch(m.stem)]

            def build(cls=cls, record=record, masks=masks, stem=img.stem):
                if cls.lower() not in lmap:
                    raise SampleError(f"unknown label: class {cls!r} is not in label_map {sorted(lmap)}")
                if not masks:
                    raise SampleError(f"no mask file {stem}_mask.png")
                rel, size = imp.image_size(record)
                boxes = _boxes_from_masks(imp, masks, size, all_components)
                base = _safe_id(stem)
                return [imp.sample(id=base if len(boxes) == 1 else f"{base}_c{k + 1}", image_path=rel, box=b,
                                   attribute=attribute, label=lmap[cls.lower()], c=default_c, organ=organ,
                                   question="", image_size=size,
                                   meta={"source": "BUSI", "class": cls, "masks": masks, "c_proxy": "default_c"})
                        for k, b in enumerate(boxes)]
            imp.add(record, build)
    return imp.done()


def birads_confidence(birads, pathology: str, birads4_uncertain: bool = False) -> tuple[int, str]:
    """BUS-BRA confidence PROXY (one reader): (c, reader's class) from BI-RADS and the biopsy.

    The reader's class is "benign" for BI-RADS 1-3 and "malignant" for 4, 4a-4c, 5, 6 (biopsy
    recommended). c = 1 when it agrees with the biopsy pathology, else 0; BI-RADS 4a / 4b (low /
    moderate suspicion) always give c = 0, and so does plain 4 when `birads4_uncertain`.
    Raises SampleError for an unknown BI-RADS value.
    """
    b = re.sub(r"^(bi-?rads)?\s*", "", str(birads).strip().lower())
    if b not in {"1", "2", "3", "4", "4a", "4b", "4c", "5", "6"}:
        raise SampleError(f"unknown BI-RADS category {birads!r}")
    reader = "benign" if b in {"1", "2", "3"} else "malignant"
    uncertain = b in {"4a", "4b"} or (b == "4" and birads4_uncertain)
    return int(reader == pathology.strip().lower() and not uncertain), reader


def import_bus_bra(root, strict: bool = True, attribute: str = "margin", label_map: Optional[dict] = None,
                   organ: str = "breast", limit: Optional[int] = None, folds: Optional[Iterable[int]] = None,
                   birads4_uncertain: bool = False, limit_per_attribute: Optional[int] = None):
    """Import BUS-BRA (``bus_data.csv``, ``Images/bus_NNNN-x.png``, ``Masks/mask_NNNN-x.png``).

    Box: the largest 8-connected component of the mask, original-image pixels. Label:
    ``label_map[Pathology]``, default the margin PROXY ``MARGIN_PROXY`` (benign -> Circumscribed,
    malignant -> Not circumscribed). c: the PROXY :func:`birads_confidence` (BI-RADS reading vs
    biopsy; BUS-BRA has one reader, so this stands in for rater disagreement); rater_labels holds
    (reader's label, biopsy label) through the same label map. `folds` keeps rows whose 5-fold
    ``kFold`` (5-fold-cv.csv) is listed; `limit` (or `limit_per_attribute`: the same, one attribute)
    stops after that many samples. Rows whose image is
    not on disk (the shared copy has folds 1-3 only) are listed in ``report.notes``.
    Returns (samples, ImportReport).
    """
    lmap = _label_map(label_map, attribute, "import_bus_bra")
    imp = RecordImporter(root, strict, f"BUS-BRA {root}", limit=limit, limit_per_attribute=limit_per_attribute)
    table = imp.root / "bus_data.csv"
    if not table.exists():
        raise FileNotFoundError(f"{table}: BUS-BRA table bus_data.csv not found")
    kfold = {}
    if (imp.root / "5-fold-cv.csv").exists():
        with open(imp.root / "5-fold-cv.csv", newline="") as f:
            kfold = {r["ID"]: int(r["kFold"]) for r in csv.DictReader(f)}
    folds = None if folds is None else {int(k) for k in folds}
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    for line, row in enumerate(rows, start=2):
        rid = (row.get("ID") or "").strip()
        img_rel, mask_rel = f"Images/{rid}.png", f"Masks/{rid.replace('bus_', 'mask_', 1)}.png"
        record = f"bus_data.csv line {line} (id={rid!r}, image={img_rel})"
        if folds is not None and kfold.get(rid) not in folds:
            continue
        if not (imp.root / img_rel).exists():
            imp.report.notes.append((record, "image not in this copy"))
            continue
        if not imp.take(attribute):
            continue

        def build(row=row, rid=rid, img_rel=img_rel, mask_rel=mask_rel):
            path = (row.get("Pathology") or "").strip().lower()
            if path not in lmap:
                raise SampleError(f"unknown label: Pathology {path!r} is not in label_map {sorted(lmap)}")
            c, reader = birads_confidence(row.get("BIRADS"), path, birads4_uncertain)
            rel, size = imp.image_size(img_rel)
            box = _boxes_from_masks(imp, [mask_rel], size, False)[0]
            meta = {"source": "BUS-BRA", "pathology": path, "birads": row.get("BIRADS"), "kfold": kfold.get(rid),
                    "histology": row.get("Histology"), "device": row.get("Device"), "case": row.get("Case"),
                    "c_proxy": "BI-RADS vs biopsy", "rater_labels_proxy": "(BI-RADS reader, biopsy)"}
            return [imp.sample(id=rid, image_path=rel, box=box, attribute=attribute, label=lmap[path], c=c,
                               organ=organ, question="", rater_labels=(lmap[reader], lmap[path]),
                               image_size=size, meta=meta)]
        imp.add(record, build)
    return imp.done()


def _read_manifest(path: Path) -> list[tuple[int, object]]:
    """(line number, record dict or the JSON error) of a CSV (header = line 1) or JSONL manifest."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [(i, r) for i, r in enumerate(csv.DictReader(f), start=2)]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    out.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    out.append((i, SampleError(f"bad JSON ({e})")))
        return out
    raise ValueError(f"{path}: manifest must be .csv or .jsonl")


def _raise(error: Exception):
    raise error


def _manifest_box(rec: dict) -> tuple:
    box = rec.get("box")
    if box in (None, "") and all(k in rec for k in ("x1", "y1", "x2", "y2")):
        box = [rec[k] for k in ("x1", "y1", "x2", "y2")]
    try:
        box = json.loads(box) if isinstance(box, str) else box
        if len(box) != 4:
            raise ValueError
        return tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise SampleError(f"box must be 4 numbers x1, y1, x2, y2 (original pixels), got {box!r}") from None


MANIFEST_COLUMNS = ("image", "box", "x1", "y1", "x2", "y2", "attribute", "label", "c", "rater_a", "rater_b",
                    "organ", "id", "question", "patient", "fold")
_SUGGESTED = ("image", "box", "attribute", "label", "c", "rater_a", "rater_b", "id", "organ", "question")


def _check_columns(imp: RecordImporter, rows: list, name: str) -> None:
    """A column that is no manifest column but close to a missing one ("lable") is a problem of the
    header record; any other unknown column is noted as not read."""
    columns = list(dict.fromkeys(k for _, r in rows if isinstance(r, dict) for k in r))
    missing = [c for c in _SUGGESTED if c not in columns]
    record = f"{name} line 1 (header)" if name.lower().endswith(".csv") else f"{name} (record keys)"
    for col in (c for c in columns if c not in MANIFEST_COLUMNS):
        close = difflib.get_close_matches(str(col), missing, n=1, cutoff=0.6)
        if close:
            imp.add(record, lambda col=col, close=close: _raise(SampleError(
                f"column {col!r} is not a manifest column: did you mean {close[0]!r}? (columns: {MANIFEST_COLUMNS})")))
        else:
            imp.report.notes.append((record, f"column {col!r} is not a manifest column, not read"))


def _confidence(imp: RecordImporter, rec: dict, attr: str, raters: tuple) -> int:
    if rec.get("c") not in (None, ""):
        if str(rec["c"]).strip().lower() not in ("0", "1", "0.0", "1.0", "true", "false"):
            raise SampleError(f"c must be 0 or 1, got {rec['c']!r}")
        return int(str(rec["c"]).strip().lower() in ("1", "1.0", "true"))
    if len(raters) == 2:
        return int(imp.peek(raters[0], attr) == imp.peek(raters[1], attr)) if attr in ATTRIBUTE_LABELS else 0
    raise SampleError("needs a c column or both rater_a and rater_b")


def _manifest_meta(rec: dict, name: str, line: int) -> dict:
    meta = {"source": f"manifest {name}", "line": line}
    if rec.get("patient") not in (None, ""):
        meta["patient"] = str(rec["patient"]).strip()
    if rec.get("fold") not in (None, ""):
        try:
            meta["fold"] = int(float(rec["fold"]))
        except (TypeError, ValueError):
            raise SampleError(f"fold must be an integer, got {rec['fold']!r}") from None
    return meta


def _manifest_samples(imp: RecordImporter, rec: dict, image: str, rid: str, organ: str, name: str, line: int):
    """The one sample of a manifest record (see :func:`import_manifest`); SampleError when it is bad."""
    if not image:
        raise SampleError("no image path")
    attr = str(rec.get("attribute") or "").strip()
    raters = tuple(str(rec[k]).strip() for k in ("rater_a", "rater_b") if rec.get(k) not in (None, ""))
    c = _confidence(imp, rec, attr, raters)
    label = str(rec.get("label") or "").strip() or (raters[0] if len(raters) == 2 and c == 1 else "")
    if not label:
        raise SampleError("no label (and no agreeing rater_a / rater_b to take it from)")
    box = _manifest_box(rec)
    meta = _manifest_meta(rec, name, line)
    rel, size = imp.image_size(image)
    return [imp.sample(id=rid, image_path=rel, box=box, attribute=attr, label=label, c=c,
                       organ=str(rec.get("organ") or organ), question=str(rec.get("question") or ""),
                       rater_labels=raters if len(raters) == 2 else None, image_size=size, meta=meta)]


def import_manifest(path, root=None, strict: bool = True, organ: str = "unknown", label_map: Optional[dict] = None,
                    limit: Optional[int] = None, limit_per_attribute: Optional[int] = None):
    """Import a generic CSV / JSONL manifest, one sample per row.

    Columns (names case-insensitive, see ``MANIFEST_COLUMNS``): image (path relative to `root`,
    default the manifest's folder), box (JSON list [x1, y1, x2, y2] in original-image pixels) or
    x1, y1, x2, y2 columns, attribute, label, and either c (0/1) or rater_a and rater_b (c = 1 when
    they agree; label defaults to the agreed one); optional organ (default `organ`), id (default
    the image stem), question, patient (kept in ``meta["patient"]``: splits keep a patient's cases
    together) and fold (an integer, ``meta["fold"]``). A column close to a missing one ("lable")
    is a problem; other unknown columns are noted and not read.
    Labels (and rater labels) go through `label_map` first ({raw: canonical label}, raw matched
    case-insensitively), then the vocabulary's normaliser (synonyms, BI-RADS subtypes -> parent);
    a label with no parent is reported per label with its count (``report.unknown_labels``).
    `limit` stops after that many samples, `limit_per_attribute` after that many of each attribute.
    Returns (samples, ImportReport).
    """
    path = Path(path)
    imp = RecordImporter(root if root is not None else path.parent, strict, f"manifest {path}", label_map,
                         limit=limit, limit_per_attribute=limit_per_attribute)
    rows = [(line, rec if isinstance(rec, SampleError) else
             {k.strip().lower() if isinstance(k, str) else k: v for k, v in rec.items()})
            for line, rec in _read_manifest(path)]
    _check_columns(imp, rows, path.name)
    for line, rec in rows:
        if isinstance(rec, SampleError):
            imp.add(f"{path.name} line {line}", lambda rec=rec: _raise(rec))
            continue
        image = str(rec.get("image") or "")
        rid = str(rec.get("id") or "") or _safe_id(Path(image).stem)
        if not imp.take(str(rec.get("attribute") or "").strip()):
            continue
        imp.add(f"{path.name} line {line} (id={rid!r}, image={image!r})",
                lambda rec=rec, image=image, rid=rid, line=line: _manifest_samples(imp, rec, image, rid, organ,
                                                                                    path.name, line))
    return imp.done()


IMPORTERS = {"bus_bra": import_bus_bra, "busi": import_busi, "manifest": import_manifest}


@dataclass
class RealSplit:
    """One real test split: `name` (the split becomes ``test_{name}``), the importer ("bus_bra",
    "busi" or "manifest"), the data set's folder or manifest file (relative paths are under
    ``$ZOOMDX_DATA``, see :func:`zoomdx_lib.config.data_path`), and the importer's keyword
    arguments (``label_map``, ``attribute``, ``limit``, ``limit_per_attribute``, ``root`` ...)."""

    name: str
    importer: str
    path: str
    options: dict = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec) -> "RealSplit":
        """From a dict ``{"name", "importer", "path", **options}`` (what a notebook parameter holds)."""
        if isinstance(spec, RealSplit):
            return spec
        if not isinstance(spec, dict) or not {"name", "importer", "path"} <= set(spec):
            raise ValueError(f"a real split needs name, importer and path, got {spec!r}")
        rest = {k: v for k, v in spec.items() if k not in ("name", "importer", "path")}
        split = cls(str(spec["name"]), str(spec["importer"]), str(spec["path"]), rest)
        if split.importer not in IMPORTERS:
            raise ValueError(f"real split {split.name!r}: unknown importer {split.importer!r}; "
                             f"choose one of {sorted(IMPORTERS)}")
        if not SAFE_ID.fullmatch(split.name):
            raise ValueError(f"real split name {split.name!r} must be usable in a file name (letters, digits, _ - .)")
        return split

    def run(self, path, limit_per_attribute: Optional[int] = None, root=None):
        """Import the data set at `path` (strict=False: bad records are reported and skipped), at most
        `limit_per_attribute` samples of each attribute unless the split's options say otherwise;
        `root` replaces a manifest's image root (already resolved by the caller)."""
        options = dict(self.options, **({"root": root} if root is not None else {}))
        options.setdefault("limit_per_attribute", limit_per_attribute)
        return IMPORTERS[self.importer](path, strict=False, **options)

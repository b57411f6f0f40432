"""The data-folder format: write synthetic splits, export imported real data, load splits back.

A data directory (synthetic or exported real data) looks like::

    out_dir/
      images/{id}.png               original images (8-bit gray or RGB PNG)
      crops/{id}.png                the zoom tool's crop of the true box (what turn 2 sees)
      samples_{split}.jsonl         one Sample.to_dict() per line; image_path relative to out_dir
      samples.csv                   every split in one flat table (box as x1..y2, raters as columns)
      dialogues_{split}.jsonl       {"id", "messages"}: Zoom-then-Diagnose chat messages
      dialogues_single_{split}.jsonl {"id", "messages"}: the no-zoom baseline's messages
      splits.json                   {"splits": {split: {"count", "ids", "organs", "c_counts"}}, ...}

Boxes in samples are ORIGINAL-image pixels (x1, y1, x2, y2), pixel-edge convention: a mask whose
foreground spans columns 10..19 gives x1=10, x2=20. Dialogue tool calls are in model-input
pixels (``geometry.model_input_size`` of the profile's min/max pixels). Every file is written
atomically (:mod:`zoomdx_lib.io`) and splits.json last, so a killed run never leaves a half-written
table. Real data comes in through :mod:`zoomdx_lib.data.importers`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Optional

from ..config import DATA_ENV, Profile, data_path
from ..geometry import crop_image, model_input_size
from ..io import atomic_write_text, progress as progress_bar, read_jsonl, save_png, write_jsonl
from ..protocol import parse_tool_call
from ..schema import Sample, SampleError
from .dialogue import build_dialogue, question_for, single_turn_messages, to_messages
from .images import SAFE_ID, load_image
from .importers import RealSplit
from .synth import generate_samples

CSV_COLUMNS = ["split", "id", "organ", "attribute", "label", "c", "rater_a", "rater_b", "x1", "y1", "x2", "y2",
               "width", "height", "difficulty", "question", "image_path", "meta"]


def split_seed(seed: int, split: str, organ: str) -> int:
    """A seed for one (split, organ) generator, distinct per split so train and test never share cases."""
    return zlib.crc32(f"zoomdx|{seed}|{split}|{organ}".encode()) & 0x7FFFFFFF


def _csv_row(s: Sample) -> dict:
    ra, rb = (s.rater_labels or ("", ""))
    w, h = (s.image_size or ("", ""))
    return dict(split=s.split, id=s.id, organ=s.organ, attribute=s.attribute, label=s.label, c=s.c,
                rater_a=ra, rater_b=rb, x1=s.box[0], y1=s.box[1], x2=s.box[2], y2=s.box[3], width=w, height=h,
                difficulty="" if s.difficulty is None else s.difficulty, question=s.question,
                image_path=s.image_path, meta=json.dumps(s.meta, sort_keys=True))


def _write_split(out_dir: Path, split: str, items: Iterable, profile: Profile, progress: bool = False,
                 total: Optional[int] = None) -> list[Sample]:
    """Write images, crops, samples and dialogues of one split; `items` yields (Sample, PIL image)."""
    items = progress_bar(items, progress, total=total, desc=split, leave=False)
    samples, dlg, single = [], [], []
    for s, image in items:
        if not SAFE_ID.fullmatch(s.id):
            raise SampleError(f"sample {s.id!r}: id is not usable as a file name (letters, digits, _ - .)")
        image = image if image.mode in ("L", "RGB") else image.convert("RGB")
        w, h = image.size
        img_rel, crop_rel = f"images/{s.id}.png", f"crops/{s.id}.png"
        s.image_path, s.split, s.image_size = img_rel, split, (w, h)
        s.question = s.question or question_for(s.attribute, f"{profile.seed}:{s.id}")
        s.meta = dict(s.meta, crop_path=crop_rel)
        s.validate()
        msize = model_input_size(w, h, profile.model.min_pixels, profile.model.max_pixels)
        d = build_dialogue(s, msize, seed=profile.seed)
        # crop what the tool itself would crop for this turn 1 (the true box up to rounding)
        call = parse_tool_call(d.turn1, msize, (w, h))
        save_png(image, out_dir / img_rel)
        save_png(crop_image(image, call.box_original if call.ok else s.box, profile.rollout.crop_pixels), out_dir / crop_rel)
        samples.append(s)
        dlg.append({"id": s.id, "messages": to_messages(d, img_rel, crop_rel)})
        single.append({"id": s.id, "messages": single_turn_messages(s, s.question, img_rel, profile.seed)})
    write_jsonl(out_dir / f"dialogues_{split}.jsonl", dlg)
    write_jsonl(out_dir / f"dialogues_single_{split}.jsonl", single)
    write_jsonl(out_dir / f"samples_{split}.jsonl", [s.to_dict() for s in samples])
    return samples


def _split_entry(samples: list[Sample]) -> dict:
    c_counts = {"1": sum(s.c == 1 for s in samples), "0": sum(s.c == 0 for s in samples)}
    return {"count": len(samples), "organs": sorted({s.organ for s in samples}),
            "attributes": {a: sum(s.attribute == a for s in samples) for a in sorted({s.attribute for s in samples})},
            "c_counts": c_counts, "ids": [s.id for s in samples]}


def _write_tables(out_dir: Path, entries: dict, info: dict) -> dict:
    """Rebuild samples.csv from every samples_*.jsonl present; merge `entries` into splits.json."""
    old = json.loads((out_dir / "splits.json").read_text()) if (out_dir / "splits.json").exists() else {}
    splits = dict(old.get("splits", {}), **entries)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for name in splits:
        for s in load_split(out_dir, name):
            writer.writerow(_csv_row(s))
    atomic_write_text(out_dir / "samples.csv", buf.getvalue())
    result = dict(old, **info, splits=splits)
    atomic_write_text(out_dir / "splits.json", json.dumps(result, indent=1))
    return result


def build_synthetic_splits(profile: Profile, out_dir, progress: bool = True) -> dict:
    """Generate the synthetic train / in-domain test / cross-domain test splits into `out_dir`.

    train: ``profile.data.organs_train`` x ``n_train_per_organ`` cases (the generator cycles the
    attributes, so they are balanced); ``test_{organ}`` for each training organ and for
    ``profile.data.organ_test_cross``: ``n_test_per_organ`` cases each. Each (split, organ) uses its
    own seed from :func:`split_seed` (deterministic in ``profile.seed``), and the generator's ids
    carry organ and split, so train and test never share a case (checked). Images are
    ``profile.data.image_size`` pixels square; dialogue tool calls use model-input pixels
    ``geometry.model_input_size(w, h, profile.model.min_pixels, profile.model.max_pixels)``; crops target
    ``profile.rollout.crop_pixels``. Returns the splits.json dict (split -> count, ids, organs, attribute
    and c counts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [("train", o, profile.data.n_train_per_organ) for o in profile.data.organs_train]
    plan += [(f"test_{o}", o, profile.data.n_test_per_organ)
             for o in dict.fromkeys(list(profile.data.organs_train) + [profile.data.organ_test_cross])]
    entries: dict[str, dict] = {}
    for split in dict.fromkeys(p[0] for p in plan):
        parts = [(o, n) for sp, o, n in plan if sp == split]

        def items(parts=parts, split=split):
            for organ, n in parts:
                yield from generate_samples(organ, n, seed=split_seed(profile.seed, split, organ),
                                            size=profile.data.image_size, attributes=profile.data.attributes, split=split)

        samples = _write_split(out_dir, split, items(), profile, progress, total=sum(n for _, n in parts))
        entries[split] = _split_entry(samples)
    ids = [i for e in entries.values() for i in e["ids"]]
    if len(set(ids)) != len(ids):  # images/{id}.png would be overwritten: never silently
        raise SampleError(f"{out_dir}: the generator produced ids shared between splits")
    info = {"source": "synthetic", "profile": profile.name, "seed": profile.seed, "image_size": profile.data.image_size,
            "min_pixels": profile.model.min_pixels, "max_pixels": profile.model.max_pixels, "crop_pixels": profile.rollout.crop_pixels}
    return _write_tables(out_dir, entries, info)


def load_split(data_dir, split: str) -> list[Sample]:
    """The samples of `split` in a data directory (image_path relative to `data_dir`)."""
    path = Path(data_dir) / f"samples_{split}.jsonl"
    if not path.exists():
        have = sorted(p.name[len("samples_"):-len(".jsonl")] for p in Path(data_dir).glob("samples_*.jsonl"))
        raise FileNotFoundError(f"{path}: no split {split!r} in {data_dir}; available: {have}")
    return [Sample.from_dict(d) for d in read_jsonl(path)]


def load_dialogues(data_dir, split: str, single: bool = False) -> list[dict]:
    """The {"id", "messages"} records of `split` (image paths relative to `data_dir`)."""
    return read_jsonl(Path(data_dir) / f"dialogues_{'single_' if single else ''}{split}.jsonl")


def export_samples(samples: list[Sample], images_root, out_dir, split: str, profile: Profile,
                   progress: bool = False) -> dict:
    """Write imported samples as split `split` of a data directory, in the synthetic splits' format.

    Images (``images_root / sample.image_path``, or absolute paths) are loaded with
    :func:`load_image` (16-bit, RGBA, palette -> 8-bit RGB) and saved as ``images/{id}.png``; boxes
    stay in original-image pixels. Files of other splits are left as they are (samples.csv and
    splits.json are rebuilt to include this split). An id already used by another split raises
    SampleError. Returns the updated splits.json dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads((out_dir / "splits.json").read_text()) if (out_dir / "splits.json").exists() else {}
    taken = {i: name for name, e in old.get("splits", {}).items() if name != split for i in e.get("ids", [])}
    clash = [s.id for s in samples if s.id in taken]
    if clash:
        raise SampleError(f"export to split {split!r}: ids {clash[:5]} already belong to split {taken[clash[0]]!r}")
    root = Path(images_root)

    def items():
        for s in samples:
            src = Path(s.image_path) if Path(s.image_path).is_absolute() else root / s.image_path
            t = Sample.from_dict(s.to_dict())
            t.meta = dict(t.meta, source_image=str(s.image_path))
            yield t, load_image(src)

    written = _write_split(out_dir, split, items(), profile, progress, total=len(samples))
    return _write_tables(out_dir, {split: _split_entry(written)}, {})


def load_items(data_dir, split: str, limit: Optional[int] = None) -> list[tuple]:
    """(sample, PIL image) pairs of a split (the first `limit` when given)."""
    samples = load_split(data_dir, split)[:limit] if limit else load_split(data_dir, split)
    return [(s, load_image(Path(data_dir) / s.image_path)) for s in samples]


def test_splits(data_dir) -> list[str]:
    """Names of the test splits in a data folder, in-domain first, as listed in splits.json."""
    splits = json.loads((Path(data_dir) / "splits.json").read_text())["splits"]
    return [name for name in splits if name.startswith("test_")]


def split_summary(samples: list[Sample]) -> dict:
    """{n, c0_rate}: how many samples a split has and the share on which the raters disagree (0-1)."""
    return dict(n=len(samples), c0_rate=sum(s.c == 0 for s in samples) / max(1, len(samples)))


def import_real_splits(specs, out_dir, profile: Profile) -> dict:
    """Import each real data set of `specs` (:class:`RealSplit` dicts) and export it as ``test_{name}``.

    Relative paths are under ``$ZOOMDX_DATA``. A data set that is not there is skipped with the
    reason, unless ``$ZOOMDX_DATA`` is set, which promises the data: then FileNotFoundError. Each
    import keeps at most ``profile.data.n_real_test`` samples per attribute (or the spec's own
    ``limit_per_attribute``; ``limit`` caps the total). Returns {name: {"split", "path", "report"
    (ImportReport, or None when skipped), "summary", "kept", "dropped"}}: summary holds n, c0_rate,
    bad_records, skipped_by_design, and over_limit (records not read because their attribute was
    full) and unknown_labels when there are any, or {"skipped": reason}; kept is {attribute: n} and
    dropped :meth:`ImportReport.dropped` (why: bad records per problem, skipped by design per reason,
    over the limit per attribute).
    """
    out = {}
    for split in map(RealSplit.from_spec, specs):
        path = data_path(split.path)
        if not path.exists():
            why = (f"{split.importer} data set {split.name!r} not found at {path} "
                   f"(set {DATA_ENV} or the split's path; see the README, 'Real data')")
            if os.environ.get(DATA_ENV) and not Path(split.path).is_absolute():
                raise FileNotFoundError(why)
            out[split.name] = dict(split=f"test_{split.name}", path=str(path), report=None, summary={"skipped": why},
                                   kept={}, dropped={})
            continue
        root = data_path(split.options["root"]) if split.options.get("root") else None
        samples, report = split.run(path, profile.data.n_real_test, root)
        root = root or (path if path.is_dir() else path.parent)
        export_samples(samples, root, out_dir, f"test_{split.name}", profile)
        summary = dict(**split_summary(samples), bad_records=len(report.problems), skipped_by_design=len(report.notes))
        if report.over_limit:
            summary["over_limit"] = sum(report.over_limit.values())
        if report.unknown_labels:
            summary["unknown_labels"] = report.label_rows()
        out[split.name] = dict(split=f"test_{split.name}", path=str(path), report=report, summary=summary,
                               kept=dict(sorted(report.kept.items())), dropped=report.dropped())
    return out

"""Fine-tune a checkpoint on any data set: evaluate it, train the paper's LoRA on true-box dialogues, evaluate again.

    python -m zoomdx_lib.workbook.finetune --data bus_bra:bus_bra --train 1,2 --test 3 --out runs/finetune/bus_bra
    python -m zoomdx_lib.workbook.finetune --data manifest:mine/cases.csv --test 0.2 --split-seed 0 --out runs/finetune/mine

takes the cases of a data SPEC (:mod:`zoomdx_lib.data.sources`; relative paths under ``$ZOOMDX_DATA``),
splits them into train and test by folds (``--train 1,2 --test 3``: BUS-BRA's kFold or a manifest's
fold column; without ``--train``, every other fold) or by fractions of patients with a seed
(``--test 0.2 [--train 0.8] --split-seed 0``: a patient's cases stay on one side where the data
names patients, BUS-BRA's Case or a manifest's patient column; otherwise each case is its own unit),
evaluates a model (default: the shipped base) on the test cases exactly as
:mod:`zoomdx_lib.eval.grounding` does (turn 1's own box against the true box; turn 2 from the crop
of the TRUE box) with the profile's token limits and crop size, trains a LoRA adapter (the paper's
r=32 on the language model and merger, vision tower frozen) on true-box dialogues of the train
cases, evaluates again on the same test cases, and prints one JSON line with both reports and the
paired bootstrap interval of (after - zero-shot) for mIoU and accuracy.

Everything lands in ``--out``: ``report.json`` (also written after the zero-shot evaluation),
``adapter/``, ``checkpoints/`` and the evaluations ``eval_zero_shot.json`` / ``eval_after_sft.json``.
A rerun with the same arguments resumes: finished evaluations are reused when their model, cases
and settings match, and training continues from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from peft import get_peft_model

from ..config import SHIPPED_BASE, get_profile
from ..data.import_report import ImportProblems
from ..data.sources import DataSpec, fold_of, fraction_split, load_cases, patient_of, read_label_map
from ..eval import metrics as M
from ..eval.grounding import grounding_report
from ..io import atomic_write_json, progress
from ..model.load import load_model_and_processor, lora_config
from ..train.pretrain import encode_case
from ..train.sft import train

SUMMARY_KEYS = ("n", "miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc", "tool_call_valid")


def parse_side(text: Optional[str]):
    """``("folds", [ints])`` for "1,2", ``("fraction", x)`` for "0.2" (0 < x <= 1), None for None / "".

    >>> parse_side("1,2"), parse_side("0.25"), parse_side(None)
    (('folds', [1, 2]), ('fraction', 0.25), None)
    """
    if text in (None, ""):
        return None
    text = str(text).strip()
    if "." in text:
        x = float(text)
        if not 0 < x <= 1:
            raise ValueError(f"split fraction {text!r} must be in (0, 1]")
        return "fraction", x
    try:
        return "folds", [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is neither folds (1,2) nor a fraction (0.2)") from None


def _by_folds(spec, train, test, limit, load) -> tuple[list, list, dict]:
    if train is None:   # every other fold of the data set
        items, report = load(None, None)
        te = [it for it in items if fold_of(it[0]) in set(test)]
        tr = [it for it in items if fold_of(it[0]) is not None and fold_of(it[0]) not in set(test)]
        if not te:
            raise ValueError(f"data {spec.text!r}: no case in folds {list(test)}")
        train = sorted({fold_of(s) for s, _ in tr})
        reports = {"all": report}
    else:
        (te, r_te), (tr, r_tr) = load(test, limit), load(train, limit)
        reports = {"test": r_te, "train": r_tr}
    return tr[:limit], te[:limit], dict(by="folds", train_folds=list(train), test_folds=list(test), reports=reports)


def split_data(spec: DataSpec, train, test, limit: Optional[int] = None, split_seed: int = 0, n: Optional[int] = None,
               **load_kw):
    """(train items, test items, info) of a SPEC split by folds or by fractions (:func:`parse_side` values;
    see the module docstring); at most `limit` cases per side; `n` fresh cases for synthetic data (fractions
    only). `load_kw` go to :func:`zoomdx_lib.data.sources.load_cases`.
    info holds how it was split, the counts per side, the import reports and the patients both sides share."""
    if test is None:
        raise ValueError("--test is required: folds (3) or a fraction of patients (0.2)")
    load = lambda folds, n: load_cases(spec, n, folds=folds, **load_kw)  # noqa: E731
    if test[0] == "folds":
        if spec.kind == "synthetic":
            raise ValueError(f"data {spec.text!r} is synthetic: it has no folds (split it by a fraction, --test 0.2)")
        if train is not None and train[0] != "folds":
            raise ValueError("--train and --test must both be folds or both be fractions")
        tr, te, info = _by_folds(spec, None if train is None else train[1], test[1], limit, load)
    else:
        if train is not None and train[0] != "fraction":
            raise ValueError("--train and --test must both be folds or both be fractions")
        items, report = load(None, n)
        frac = 1.0 - test[1] if train is None else train[1]
        tr, te, info = fraction_split(items, frac, test[1], split_seed)
        tr, te = tr[:limit], te[:limit]
        info.update(train_fraction=frac, test_fraction=test[1], split_seed=split_seed, reports={"all": report})
    if not tr or not te:
        raise ValueError(f"data {spec.text!r}: the split leaves {len(tr)} train and {len(te)} test cases")
    shared_ids = {s.id for s, _ in tr} & {s.id for s, _ in te}
    if shared_ids:
        raise ValueError(f"data {spec.text!r}: cases {sorted(shared_ids)[:5]} are on both sides of the split")
    info.update(n_train=len(tr), n_test=len(te), shared_patients=len(
        {patient_of(s) for s, _ in tr if patient_of(s).startswith("patient:")} & {patient_of(s) for s, _ in te}))
    return tr, te, info


def paired_difference(before: dict, after: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """(after - before) mIoU and accuracy with paired 95 % bootstrap intervals over the same cases.

    Both reports come from :func:`grounding_report` with ``per_case=True`` on the same cases.

    >>> a = {"cases": [{"iou": 0.1, "hit": 0.0}, {"iou": 0.2, "hit": 1.0}]}
    >>> b = {"cases": [{"iou": 0.3, "hit": 1.0}, {"iou": 0.2, "hit": 1.0}]}
    >>> d = paired_difference(a, b, n_boot=100)
    >>> round(d["miou"][0], 3), d["acc"][0]
    (0.1, 0.5)
    """
    iou = np.array([[c["iou"] for c in r["cases"]] for r in (before, after)])
    hit = np.array([[c["hit"] for c in r["cases"]] for r in (before, after)], float)
    d_iou, d_hit = iou[1] - iou[0], hit[1] - hit[0]
    ci = M.bootstrap(lambda i: {"miou": float((d_iou if i is None else d_iou[i]).mean()),
                                "acc": float((d_hit if i is None else d_hit[i]).mean())},
                     len(d_iou), n_boot, seed=seed)
    return {k: list(v) for k, v in ci.items()}


def evaluate(model, processor, items, crop_pixels: int, seed: int = 0, max_new_tokens=(64, 64),
             show_progress: bool = False) -> dict:
    """Grounding report with per-case IoU and hit (1.0 when answer == label) for the paired comparison;
    `max_new_tokens` per turn should be the profile's (``profile.rollout.max_new_tokens``)."""
    model.eval()
    r = grounding_report(model, processor, items, crop_pixels, max_new_tokens, seed=seed, per_case=True,
                         progress=show_progress)
    for case in r["cases"]:
        case["hit"] = float(case["hit"])
    return r


def _ids_hash(items) -> str:
    return hashlib.sha256("\n".join(s.id for s, _ in items).encode()).hexdigest()[:16]


def cached(path: Path, fingerprint: dict, compute) -> dict:
    """``compute()``, or the report stored at `path` by an earlier run with the same `fingerprint`;
    stores what it computed (atomically) with its fingerprint."""
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == fingerprint:
            return stored["report"]
    report = compute()
    atomic_write_json(path, {"fingerprint": fingerprint, "report": report})
    return report


def _train_lora(model, processor, items, prof, args, out: Path):
    """The LoRA-wrapped model trained for ``args.steps`` on true-box dialogues of `items`, and its log."""
    crop = prof.rollout.crop_pixels
    examples = [encode_case(s, im, processor, crop).example
                for s, im in progress(items, not args.quiet, desc="encode", leave=False)]
    torch.manual_seed(args.seed)
    hp = prof.hp
    peft_model = get_peft_model(model, lora_config(hp.lora_rank, hp.lora_alpha, hp.lora_dropout))
    history = train(peft_model, processor, examples, args.steps, args.batch_size, args.lr, out / "checkpoints",
                    checkpoint_every=args.checkpoint_every, seed=args.seed, progress=not args.quiet,
                    device=prof.device)
    peft_model.save_pretrained(out / "adapter", safe_serialization=True)
    return peft_model, history


def run(args) -> dict:
    """Evaluate, train and evaluate again as the module docstring says; returns report.json's content."""
    prof, out, t0 = get_profile(args.profile), Path(args.out), time.perf_counter()
    spec = DataSpec.parse(args.data)
    tr, te, info = split_data(spec, parse_side(args.train), parse_side(args.test), args.limit, args.split_seed,
                              args.n, seed=args.seed, image_size=prof.data.image_size,
                              label_map=read_label_map(args.label_map), strict=args.strict)
    reports = info.pop("reports")
    model_dir = Path(args.model) if args.model else SHIPPED_BASE
    model, processor = load_model_and_processor(model_dir, device=prof.device, **prof.model.pixel_bounds)
    ev = dict(profile=prof.name, crop_pixels=prof.rollout.crop_pixels, max_new_tokens=list(prof.rollout.max_new_tokens),
              seed=args.seed, test=_ids_hash(te))
    evaluate_ = lambda m: evaluate(m, processor, te, prof.rollout.crop_pixels, args.seed,  # noqa: E731
                                   prof.rollout.max_new_tokens, not args.quiet)
    report = dict(data=spec.text, root=str(spec.root or spec.text), **info, model=str(model_dir),
                  imports={k: r.summary() for k, r in reports.items() if r is not None})
    report["zero_shot"] = cached(out / "eval_zero_shot.json", dict(ev, model=str(model_dir)), lambda: evaluate_(model))
    atomic_write_json(out / "report.json", dict(report, seconds=round(time.perf_counter() - t0, 1)))
    if args.steps > 0:
        sft = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        peft_model, history = _train_lora(model, processor, tr, prof, args, out)
        report.update(n_train=len(tr), sft=dict(sft, final_loss=history[-1]["loss"] if history else None))
        fp = dict(ev, model=str(model_dir), sft=sft, train=_ids_hash(tr), train_seed=args.seed)
        report["after_sft"] = cached(out / "eval_after_sft.json", fp, lambda: evaluate_(peft_model))
        report["difference"] = paired_difference(report["zero_shot"], report["after_sft"], seed=args.seed)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "report.json", report)
    return report


def summary_line(report: dict) -> str:
    """The printed JSON line: the report with each evaluation cut to its summary keys (no cases)."""
    return json.dumps({k: ({kk: v[kk] for kk in SUMMARY_KEYS} if isinstance(v, dict) and "cases" in v else v)
                       for k, v in report.items()})


def parser(prog: str = "python -m zoomdx_lib.workbook.finetune", profile: str = "cpu") -> argparse.ArgumentParser:
    """The command's arguments; training defaults (steps, batch size, learning rate) are `profile`'s LoRA stage."""
    sft = get_profile(profile).sft
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="SPEC: bus_bra:PATH | busi:PATH | manifest:PATH | liver | breast "
                                                  "| thyroid (relative paths under $ZOOMDX_DATA)")
    ap.add_argument("--train", default=None, help="train folds (1,2) or fraction of patients (0.8); default: the rest")
    ap.add_argument("--test", required=True, help="test folds (3) or fraction of patients (0.2)")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of a fraction split (default 0)")
    ap.add_argument("--label-map", default=None, help="JSON {raw label: canonical label}, inline or a file")
    ap.add_argument("--strict", action="store_true", help="stop when any record is bad (default: skip and report)")
    ap.add_argument("--n", type=int, default=None, help="synthetic data: how many fresh cases to split (default 64)")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the shipped base)")
    ap.add_argument("--steps", type=int, default=sft.lora_steps, help="LoRA SFT steps (0: zero-shot only)")
    ap.add_argument("--batch-size", type=int, default=sft.batch_size)
    ap.add_argument("--lr", type=float, default=sft.lr_lora)
    ap.add_argument("--checkpoint-every", type=int, default=sft.checkpoint_every)
    ap.add_argument("--limit", type=int, default=None, help="at most this many cases per side (quick checks)")
    ap.add_argument("--profile", default=profile, help="profile whose pixel bounds, crop size, token limits and "
                                                       "LoRA shape are used")
    ap.add_argument("--seed", type=int, default=0, help="seed of LoRA init, batches, evaluation and synthetic cases")
    ap.add_argument("--out", default="runs/finetune", help="folder for report.json, the adapter and its checkpoints")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: Optional[list] = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = run(args)
    except (ImportProblems, ValueError, FileNotFoundError) as e:
        print(str(e), file=sys.stderr)
        return 2
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real breast B-mode (BUS-BRA): the base zero-shot, then after LoRA SFT on BUS-BRA's own train folds.

    python -m zoomdx_lib.workbook.bus_bra --train-folds 1,2 --test-folds 3 --steps 300 --out runs/bus_bra

reads BUS-BRA from ``$ZOOMDX_DATA/bus_bra`` (or ``--root``), evaluates a model (default: the shipped
base) on the test folds exactly as :mod:`zoomdx_lib.eval.grounding` does on synthetic cases (turn 1's
own box against the mask's box; turn 2 from the crop of the TRUE box), trains a LoRA adapter (the
paper's r=32 on the language model and merger, vision tower frozen) on true-box dialogues of the
train folds, evaluates again on the same test cases, and prints one JSON line with both reports and
the paired bootstrap interval of (after - zero-shot) for mIoU and accuracy.

BUS-BRA has no margin annotation: the label is the importer's stated PROXY (benign -> Circumscribed,
malignant -> Not circumscribed, see :func:`zoomdx_lib.data.importers.import_bus_bra`). Patients
never cross folds (BUS-BRA's own 5-fold split), so train and test folds share no patient.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from peft import get_peft_model

from ..config import SHIPPED_BASE, data_path, get_profile
from ..data.dialogue import question_for
from ..data.images import load_image
from ..data.importers import import_bus_bra
from ..eval import metrics as M
from ..eval.grounding import grounding_report
from ..io import atomic_write_json
from ..model.load import load_model_and_processor, lora_config
from ..train.pretrain import encode_case
from ..train.sft import train


def load_cases(root, folds: Sequence[int], limit: Optional[int] = None) -> list[tuple]:
    """(sample, RGB image) pairs of BUS-BRA's `folds`, each with a question about its attribute."""
    root = Path(root)
    samples, report = import_bus_bra(root, folds=folds, limit=limit)
    if not samples:
        raise ValueError(f"BUS-BRA at {root}: no case in folds {list(folds)} ({len(report.notes)} rows noted, "
                         f"e.g. {report.notes[:2]})")
    items = []
    for s in samples:
        s.question = question_for(s.attribute, f"busbra:{s.id}")
        items.append((s, load_image(root / s.image_path)))
    return items


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
    hit = np.array([[c["hit"] for c in r["cases"]] for r in (before, after)])
    d_iou, d_hit = iou[1] - iou[0], hit[1] - hit[0]
    ci = M.bootstrap(lambda i: {"miou": float((d_iou if i is None else d_iou[i]).mean()),
                                "acc": float((d_hit if i is None else d_hit[i]).mean())},
                     len(d_iou), n_boot, seed=seed)
    return {k: list(v) for k, v in ci.items()}


def evaluate(model, processor, items, crop_pixels: int, seed: int = 0) -> dict:
    """Grounding report with per-case IoU and hit (answer == label) for the paired comparison."""
    model.eval()
    with torch.no_grad():
        r = grounding_report(model, processor, items, crop_pixels, seed=seed, per_case=True)
    for case, (s, _) in zip(r["cases"], items):
        case["hit"] = float(case["answer"] == s.label)
    return r


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.workbook.bus_bra", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="bus_bra", help="BUS-BRA folder (relative paths are under $ZOOMDX_DATA)")
    ap.add_argument("--train-folds", default="1,2")
    ap.add_argument("--test-folds", default="3")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the shipped base)")
    ap.add_argument("--steps", type=int, default=300, help="LoRA SFT steps (0: zero-shot only)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--limit", type=int, default=None, help="at most this many cases per side (quick checks)")
    ap.add_argument("--profile", default="cpu", help="profile whose pixel bounds, crop size and LoRA shape are used")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bus_bra", help="folder for the adapter, its checkpoints and report.json")
    args = ap.parse_args(argv)
    folds = lambda s: [int(f) for f in s.split(",") if f]  # noqa: E731
    prof, out = get_profile(args.profile), Path(args.out)
    root = data_path(args.root)
    t0 = time.perf_counter()
    test = load_cases(root, folds(args.test_folds), args.limit)
    model, processor = load_model_and_processor(Path(args.model) if args.model else SHIPPED_BASE,
                                                **prof.model.pixel_bounds)
    crop = prof.rollout.crop_pixels
    report = dict(root=str(root), test_folds=folds(args.test_folds), train_folds=folds(args.train_folds),
                  model=str(args.model or SHIPPED_BASE), zero_shot=evaluate(model, processor, test, crop, args.seed))
    if args.steps > 0:
        train_items = load_cases(root, folds(args.train_folds), args.limit)
        examples = [encode_case(s, im, processor, crop).example for s, im in train_items]
        torch.manual_seed(args.seed)
        hp = prof.hp
        peft_model = get_peft_model(model, lora_config(hp.lora_rank, hp.lora_alpha, hp.lora_dropout))
        history = train(peft_model, processor, examples, args.steps, args.batch_size, args.lr, out / "checkpoints",
                        checkpoint_every=100, seed=args.seed)
        peft_model.save_pretrained(out / "adapter", safe_serialization=True)
        report.update(n_train=len(examples), sft=dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                                      final_loss=history[-1]["loss"] if history else None),
                      after_sft=evaluate(peft_model, processor, test, crop, args.seed))
        report["difference"] = paired_difference(report["zero_shot"], report["after_sft"], seed=args.seed)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "report.json", report)
    keys = ("n", "miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc", "tool_call_valid")
    print(json.dumps({k: ({kk: v[kk] for kk in keys} if isinstance(v, dict) and "cases" in v else v)
                      for k, v in report.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

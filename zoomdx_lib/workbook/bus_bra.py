"""Real breast B-mode (BUS-BRA): the base zero-shot, then after LoRA SFT on BUS-BRA's own train folds.

    python -m zoomdx_lib.workbook.bus_bra --train-folds 1,2 --test-folds 3 --steps 300 --out runs/bus_bra

is :mod:`zoomdx_lib.workbook.finetune` on BUS-BRA, with this command's flags::

    python -m zoomdx_lib.workbook.finetune --data bus_bra:bus_bra --train 1,2 --test 3 --steps 300 --out runs/bus_bra

It reads BUS-BRA from ``$ZOOMDX_DATA/bus_bra`` (or ``--root``), evaluates a model (default: the shipped
base) on the test folds exactly as :mod:`zoomdx_lib.eval.grounding` does (turn 1's own box against the
mask's box; turn 2 from the crop of the TRUE box), trains a LoRA adapter (the paper's r=32 on the
language model and merger, vision tower frozen) on true-box dialogues of the train folds, evaluates
again on the same test cases, writes ``report.json`` and prints one JSON line with both reports and
the paired bootstrap interval of (after - zero-shot) for mIoU and accuracy.

BUS-BRA has no margin annotation: the label is the importer's stated PROXY (benign -> Circumscribed,
malignant -> Not circumscribed, see :func:`zoomdx_lib.data.importers.import_bus_bra`). Patients
never cross folds (BUS-BRA's own 5-fold split), so train and test folds share no patient.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..config import data_path
from ..data.sources import DataSpec, load_cases as _load_cases
from . import finetune
from .finetune import evaluate, paired_difference  # noqa: F401 (this command's API before finetune existed)


def load_cases(root, folds: Sequence[int], limit: Optional[int] = None) -> list[tuple]:
    """(sample, RGB image) pairs of BUS-BRA's `folds` at `root`, each with a question about its attribute;
    ValueError when no case is in those folds."""
    items, _ = _load_cases(DataSpec("bus_bra", f"bus_bra:{root}", path=data_path(root)), limit, folds=list(folds))
    return items


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
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    forward = ["--data", f"bus_bra:{args.root}", "--train", args.train_folds, "--test", args.test_folds,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--profile", args.profile, "--seed", str(args.seed), "--out", args.out]
    forward += (["--model", args.model] if args.model else []) + (["--limit", str(args.limit)] if args.limit else [])
    return finetune.main(forward + (["--quiet"] if args.quiet else []))


if __name__ == "__main__":
    sys.exit(main())

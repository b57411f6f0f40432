"""Does a checkpoint see? Box quality of its turn 1 and accuracy of its turn 2 from the oracle crop, on any data.
Long because one command serves every data source, two checkpoints paired, the one-turn readout and the CSV.

    python -m zoomdx_lib.eval.grounding --data breast --n 64 --seed 12345 --model runs/cpu/models/sft_zoom_full
    python -m zoomdx_lib.eval.grounding --data bus_bra:bus_bra --folds 3 --out runs/grounding/bus_bra_f3.csv
    python -m zoomdx_lib.eval.grounding --data manifest:mine/cases.csv --label-map '{"benign": "Circumscribed"}'

takes the cases of a data SPEC (:mod:`zoomdx_lib.data.sources`: a synthetic organ, fresh cases with
`--seed` (use a seed nobody trained or tuned on); ``bus_bra:PATH`` with optional ``--folds``;
``busi:PATH``; ``manifest:PATH``; relative paths under ``$ZOOMDX_DATA``; ``--organ ORGAN`` is the
older spelling of a synthetic SPEC), decodes turn 1 greedily (the model's own box) and, separately,
turn 2 greedily from the crop of the TRUE box (the oracle crop: reading the lesion, with finding it
taken out of the question), and prints one JSON line per attribute and then one for all cases:

    data, organ, attribute, n, miou, miou_ci, mean_box_miou, acc, acc_ci, majority_acc, tool_call_valid,
    answer_valid, seed, model, seconds

and, with ``--against DIR`` (an ablation: two checkpoints on the same cases), also against_miou,
against_acc, miou_diff and acc_diff: (point, low, high) of model minus against, paired bootstrap.
``--single-turn`` also asks each question in the no-zoom baseline's one-turn format from the full view
(acc_single, and crop_minus_single: true-crop accuracy minus it, paired by case).
``--out FILE.csv`` writes one row per case (ids, labels, answers, both boxes, IoU).

``mean_box_miou`` is the mIoU of answering every case with the mean of these cases' own true boxes,
averaged in fractions of each image's width and height (images of different sizes count alike), and
``majority_acc`` the accuracy of answering each attribute's most frequent label among these cases:
constant answers chosen in hindsight, so a model beats them only by looking. Intervals are 95 %
percentile bootstraps over cases.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import SHIPPED_BASE, get_profile
from ..data.import_report import ImportProblems
from ..data.sources import DataSpec, load_cases, read_label_map, synthetic_cases
from ..data.synth import ORGAN_PRESETS
from ..geometry import iou
from ..io import atomic_write_text
from ..model.load import load_policy
from ..rl.rollout import HFPolicy, OraclePolicy, oracle_turn1, rollout, single_turn_rollout
from ..schema import ATTRIBUTES
from . import metrics as M
from .claims import paired_difference

SUMMARY_KEYS = ("n", "miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc", "tool_call_valid",
                "answer_valid")


def fresh_cases(organ: str, n: int, seed: int, size: int) -> list[tuple]:
    """`n` (sample, image) pairs of `organ` from the generator with `seed`, each with its question."""
    return synthetic_cases(organ, n, seed, size)


def mean_box_fractions(cases: list[dict]) -> tuple:
    """The mean true box (x1, y1, x2, y2) of `cases` in fractions (0-1) of each case's image width and height."""
    return tuple(float(v) for v in np.mean([[c["true_box"][0] / c["width"], c["true_box"][1] / c["height"],
                                             c["true_box"][2] / c["width"], c["true_box"][3] / c["height"]]
                                            for c in cases], axis=0))


def mean_box_miou(cases: list[dict]) -> float:
    """mIoU of answering every case with the mean box (:func:`mean_box_fractions`) scaled to its own image.

    >>> cases = [dict(true_box=(0, 0, 50, 50), width=100, height=100), dict(true_box=(0, 0, 100, 100), width=200, height=200)]
    >>> mean_box_miou(cases)
    1.0
    """
    f = mean_box_fractions(cases)
    return float(np.mean([iou((f[0] * c["width"], f[1] * c["height"], f[2] * c["width"], f[3] * c["height"]),
                              c["true_box"]) for c in cases]))


def summarise(cases: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """The report keys (``SUMMARY_KEYS``) of per-case records: mIoU and accuracy with 95 % intervals,
    the constant baselines (mean box in image fractions, majority label per attribute) and validity rates."""
    ious = np.array([c["iou"] for c in cases], float)
    hits = np.array([c["hit"] for c in cases], float)
    majority = {a: Counter(c["label"] for c in cases if c["attribute"] == a).most_common(1)[0][0]
                for a in {c["attribute"] for c in cases}}
    ci = M.bootstrap(lambda i: {"miou": float(ious.mean() if i is None else ious[i].mean()),
                                "acc": float(hits.mean() if i is None else hits[i].mean())},
                     len(cases), n_boot, seed=seed)
    return dict(n=len(cases), miou=ci["miou"][0], miou_ci=list(ci["miou"][1:]), mean_box_miou=mean_box_miou(cases),
                acc=ci["acc"][0], acc_ci=list(ci["acc"][1:]),
                majority_acc=float(np.mean([majority[c["attribute"]] == c["label"] for c in cases])),
                tool_call_valid=float(np.mean([c["tool_call_valid"] for c in cases])),
                answer_valid=float(np.mean([c["answer_valid"] for c in cases])), **single_turn_summary(cases, n_boot, seed))


def single_turn_summary(cases: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """With one-turn answers in the cases (``single_hit``): ``acc_single`` with ``acc_single_ci``, and
    ``crop_minus_single``: accuracy from the true crop minus from the full view in one turn, paired by case
    (point, low, high). Empty without them.

    >>> cases = [dict(hit=True, single_hit=i < 2) for i in range(4)]
    >>> out = single_turn_summary(cases, n_boot=50)
    >>> out["acc_single"], out["crop_minus_single"][0]
    (0.5, 0.5)
    """
    if not cases or "single_hit" not in cases[0]:
        return {}
    single = np.array([c["single_hit"] for c in cases], float)
    gain = np.array([c["hit"] for c in cases], float) - single
    ci = M.bootstrap(lambda i: {"single": float(single.mean() if i is None else single[i].mean()),
                                "gain": float(gain.mean() if i is None else gain[i].mean())},
                     len(cases), n_boot, seed=seed)
    return dict(acc_single=ci["single"][0], acc_single_ci=list(ci["single"][1:]), crop_minus_single=list(ci["gain"]))


def grounding_report(model, processor, items, crop_pixels: int, max_new_tokens=(64, 64), n_boot: int = 1000,
                     seed: int = 0, policy=None, read_policy=None, per_case: bool = False,
                     progress: bool = False, single_turn: bool = False, single_policy=None,
                     crop_context: float = 0.0) -> dict:
    """Box and answer quality of a (model, processor) on (sample, image) pairs; see the module docstring.

    `policy` (default: greedy `model`) writes turn 1; `read_policy` (default: the true-box call, then
    greedy `model`) gives the oracle-crop answers. Both are rollout policies (:mod:`zoomdx_lib.rl.rollout`).
    `per_case` adds ``cases``: per case its id, attribute, label, the model's box (original-image
    pixels; None when the call was invalid), IoU, answer and hit, the true box and the image's
    width and height (pixels). `progress` shows a bar per turn. `single_turn` also asks every question
    in one turn (the question with :data:`~zoomdx_lib.protocol.ONE_TURN_INSTRUCTION`), answered greedily
    from the full view: ``acc_single`` with its interval and, per case, ``single_answer`` / ``single_hit``;
    `single_policy` (default: greedy `model`) writes that one turn. `crop_context` widens the true box of the oracle crop by that fraction
    of its sides (the zoom tool's ``pad_frac``); the model's own box is scored unwidened.
    """
    torch.manual_seed(seed)
    kw = dict(max_new_tokens=max_new_tokens, crop_pixels=crop_pixels, progress=progress)
    with torch.no_grad():
        own = rollout(items, policy or HFPolicy(model, processor), processor, 1, False, **kw)
        oracle = read_policy or OraclePolicy(model, processor, [oracle_turn1(s, im, processor) for s, im in items])
        read = rollout(items, oracle, processor, 1, False, pad_frac=crop_context, **kw)
        single = (single_turn_rollout(items, single_policy or HFPolicy(model, processor), processor, 1, False,
                                      max_new_tokens=max(max_new_tokens), instruct=True) if single_turn
                  else [None] * len(items))
    cases = []
    for (s, im), g, r, one in zip(items, own, read, single):
        box, label = g[0].box, r[0].label
        cases.append(dict(id=s.id, attribute=s.attribute, label=s.label, box=None if box is None else list(box),
                          iou=float(iou(box, s.box)) if box is not None else 0.0, answer=label,
                          hit=bool(label == s.label), true_box=list(s.box), width=im.width, height=im.height,
                          tool_call_valid=bool(g[0].tool.ok), answer_valid=label is not None))
        if one is not None:
            cases[-1].update(single_answer=one[0].label, single_hit=bool(one[0].label == s.label))
    report = summarise(cases, n_boot, seed)
    if per_case:
        report["cases"] = cases
    return report


def by_attribute(cases: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """{attribute: :func:`summarise` of that attribute's cases}, in the vocabulary's attribute order."""
    return {a: summarise([c for c in cases if c["attribute"] == a], n_boot, seed)
            for a in ATTRIBUTES if any(c["attribute"] == a for c in cases)}


def paired_grounding_difference(cases: list[dict], against: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"miou": (point, low, high), "acc": (...)}`` of `cases` minus `against` (``cases`` lists of
    :func:`grounding_report` with ``per_case``), matched by id, with one bootstrap draw of cases for both;
    also ``"acc_single"`` when both lists carry one-turn answers (``single_turn``).

    >>> a = [dict(id=i, iou=0.5, hit=True) for i in range(8)]
    >>> b = [dict(id=i, iou=0.25, hit=i < 4) for i in range(8)]
    >>> d = paired_grounding_difference(a, b, n_boot=100)
    >>> d["miou"], d["acc"][0]
    ((0.25, 0.25, 0.25), 0.5)
    """
    keys = ("miou", "acc") + (("acc_single",) if cases and against and "single_hit" in cases[0]
                              and "single_hit" in against[0] else ())

    def means(cases):
        out = {"miou": float(np.mean([c["iou"] for c in cases])), "acc": float(np.mean([c["hit"] for c in cases]))}
        if "acc_single" in keys:
            out["acc_single"] = float(np.mean([c["single_hit"] for c in cases]))
        return out
    ci = paired_difference(cases, against, means, keys, n_boot, seed)
    return {k: tuple(float(x) for x in v) for k, v in ci.items()}


CSV_COLUMNS = ["id", "attribute", "label", "answer", "hit", "iou", "x1", "y1", "x2", "y2",
               "true_x1", "true_y1", "true_x2", "true_y2", "width", "height", "tool_call_valid", "answer_valid"]


def cases_csv(cases: list[dict], against: Optional[list[dict]] = None) -> str:
    """One CSV row per case: the model's box (x1..y2, empty when its call was invalid) and the true box
    in original-image pixels, IoU, answer and hit; with `against` also against_answer, _hit, _iou."""
    other = {c["id"]: c for c in against or []}
    buf = io.StringIO()
    single = bool(cases) and "single_hit" in cases[0]
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + (["single_answer", "single_hit"] if single else [])
                            + (["against_answer", "against_hit", "against_iou"] if against else []), lineterminator="\n")
    writer.writeheader()
    for c in cases:
        box = c["box"] or ["", "", "", ""]
        row = {k: c[k] for k in ("id", "attribute", "label", "answer", "hit", "iou", "width", "height",
                                 "tool_call_valid", "answer_valid") + (("single_answer", "single_hit") if single else ())}
        row.update(zip(("x1", "y1", "x2", "y2"), box), **dict(zip(("true_x1", "true_y1", "true_x2", "true_y2"),
                                                                  c["true_box"])))
        if against:
            o = other[c["id"]]
            row.update(against_answer=o["answer"], against_hit=o["hit"], against_iou=o["iou"])
        writer.writerow(row)
    return buf.getvalue()


def _line(cases: list[dict], other: Optional[list[dict]], n_boot: int, seed: int) -> dict:
    line = summarise(cases, n_boot, seed)
    if other is not None:
        ids = {c["id"] for c in cases}
        sub = [c for c in other if c["id"] in ids]
        diff = paired_grounding_difference(cases, sub, n_boot, seed)
        line.update(against_miou=float(np.mean([c["iou"] for c in sub])),
                    against_acc=float(np.mean([c["hit"] for c in sub])),
                    miou_diff=list(diff["miou"]), acc_diff=list(diff["acc"]))
    return line


def lines(cases: list[dict], other: Optional[list[dict]] = None, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """The command's JSON lines: one per attribute present, then one for all cases (attribute "all");
    with `other` (the --against checkpoint's cases) each line also has the paired differences."""
    attrs = [a for a in ATTRIBUTES if any(c["attribute"] == a for c in cases)]
    out = [dict(attribute=a, **_line([c for c in cases if c["attribute"] == a], other, n_boot, seed)) for a in attrs]
    return out + [dict(attribute="all", **_line(cases, other, n_boot, seed))]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.eval.grounding", description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--data", help="SPEC: liver | breast | thyroid | bus_bra:PATH | busi:PATH | manifest:PATH "
                                      "(relative paths under $ZOOMDX_DATA)")
    which.add_argument("--organ", choices=sorted(ORGAN_PRESETS), help="the same as --data ORGAN")
    ap.add_argument("--n", type=int, default=None, help="cases: fresh synthetic ones (default 64), or the first N "
                                                        "of a real data set (default all)")
    ap.add_argument("--seed", type=int, default=None, help="generator seed for synthetic data (required there: one "
                                                           "no training or tuning used); bootstrap seed (default 0)")
    ap.add_argument("--folds", default=None, help="real data: only these folds, e.g. 3 or 4,5 (BUS-BRA's kFold, "
                                                  "a manifest's fold column)")
    ap.add_argument("--label-map", default=None, help='JSON {raw label: canonical label}, inline or a file')
    ap.add_argument("--strict", action="store_true", help="stop when any record is bad (default: skip and report)")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the base shipped in the package)")
    ap.add_argument("--adapter", default=None, help="optional LoRA adapter folder on top of --model")
    ap.add_argument("--profile", default="cpu", help="profile whose image, crop and token sizes are used (default cpu)")
    ap.add_argument("--against", default=None,
                    help="a second checkpoint folder: also print the paired difference (model - against) of mIoU "
                         "and accuracy on the same cases, with 95 %% intervals")
    ap.add_argument("--against-adapter", default=None, help="optional LoRA adapter folder on top of --against")
    ap.add_argument("--single-turn", action="store_true",
                    help="also answer every question in one turn from the full view (the no-zoom baseline's "
                         "format): acc_single and crop_minus_single, paired by case")
    ap.add_argument("--out", default=None, help="write one CSV row per case to this file")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _check_folders(args, model_dir: Path) -> Optional[str]:
    for d in [model_dir] + ([Path(args.against)] if args.against else []):
        if not (d / "config.json").exists():
            return f"no checkpoint at {d}: pass a folder with config.json and safetensors"
    for a in (args.adapter, args.against_adapter):
        if a and not (Path(a) / "adapter_config.json").exists():
            return f"no LoRA adapter at {a}: pass a folder with adapter_config.json"
    return None


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(argv)
    model_dir = Path(args.model) if args.model else SHIPPED_BASE
    prof, seed, t0 = get_profile(args.profile), args.seed or 0, time.perf_counter()
    try:
        spec = DataSpec.parse(args.data or args.organ)
        problem = _check_folders(args, model_dir)
        if problem is None and spec.kind == "synthetic" and args.seed is None:
            problem = "synthetic data needs --seed: a generator seed no training or tuning used"
        if problem:
            raise ValueError(problem)
        folds = [int(f) for f in args.folds.split(",") if f.strip()] if args.folds else None
        items, report = load_cases(spec, args.n, seed, prof.data.image_size, folds, read_label_map(args.label_map),
                                   args.strict)
    except (ImportProblems, ValueError, FileNotFoundError) as e:
        print(str(e), file=sys.stderr)
        return 2
    if report is not None:
        print(report.summary(), file=sys.stderr)

    def cases_of(folder, adapter=None):
        model, processor = load_policy(folder, adapter, device=prof.device, **prof.model.pixel_bounds)
        return grounding_report(model, processor, items, prof.rollout.crop_pixels, prof.rollout.max_new_tokens,
                                n_boot=prof.eval.bootstrap_samples, seed=seed, per_case=True,
                                progress=not args.quiet, single_turn=args.single_turn)["cases"]

    cases = cases_of(model_dir, args.adapter)
    other = cases_of(Path(args.against), args.against_adapter) if args.against else None
    if args.out:
        atomic_write_text(Path(args.out), cases_csv(cases, other))
    organ = Counter(s.organ for s, _ in items).most_common(1)[0][0]
    head = dict(data=spec.text, organ=organ)
    tail = dict(seed=seed, model=str(model_dir), **({"adapter": args.adapter} if args.adapter else {}),
                **({"against": args.against} if args.against else {}),
                **({"bad_records": len(report.problems)} if report is not None else {}))
    for line in lines(cases, other, prof.eval.bootstrap_samples, seed):
        print(json.dumps(dict(head, **line, **tail, seconds=round(time.perf_counter() - t0, 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

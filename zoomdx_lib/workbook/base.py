"""`make base`: pretrain the tiny base, follow it on held-out cases, and optionally ship it.

    python -m zoomdx_lib.workbook.base --out runs/base                # pretrain (resumes after a kill)
    python -m zoomdx_lib.workbook.base --out runs/base --ship         # then copy it into the package

Held-out curves come from fresh liver and breast cases of a seed the stream never uses (every
`--eval-every` steps); the model card's numbers come from three more seeds, one per organ,
thyroid included (a zero-shot organ), after training. Shipping writes the stock model, its
tokenizer and processor, `MODEL_CARD.md`, `card.json` and `checksums.json` (SHA-256 of every file,
checked by :func:`zoomdx_lib.model.load.load_model_and_processor`) into ``zoomdx_lib/base``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Optional

import torch

from ..config import AUX_LOSSES, SHIPPED_BASE, PretrainConfig
from ..data.synth import STYLES
from ..eval.grounding import fresh_cases, grounding_report
from ..io import atomic_write_json
from ..model.load import load_model_and_processor, write_checksums
from ..train.loop import read_log
from ..train.pretrain import pretrain, read_evals

HELD_OUT_SEED = zlib.crc32(b"zoomdx-pretrain-heldout") & 0x7FFFFFFF   # curves during training
CARD_SEEDS = {"liver": 7101, "breast": 7102, "thyroid": 7103}          # the model card's numbers


def held_out_eval(cfg: PretrainConfig, n: int = 64, n_boot: int = 200):
    """An `evaluate(model, processor)` for :func:`pretrain`: grounding on `n` fresh cases per training organ."""
    items = {organ: fresh_cases(organ, n // len(cfg.organs), HELD_OUT_SEED, cfg.image_size) for organ in cfg.organs}

    def evaluate(model, processor) -> dict:
        out = {}
        for organ, cases in items.items():
            r = grounding_report(model, processor, cases, cfg.crop_pixels, (48, 24), n_boot=n_boot,
                                 crop_context=cfg.crop_context)
            out[organ] = {k: r[k] for k in ("miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc",
                                             "tool_call_valid")}
        out["miou"] = sum(out[o]["miou"] for o in items) / len(items)
        out["acc"] = sum(out[o]["acc"] for o in items) / len(items)
        return out
    return evaluate


def card_numbers(model_dir, cfg: PretrainConfig, n: int = 64) -> dict:
    """Grounding of the exported model on `n` fresh cases of each organ (seeds `CARD_SEEDS`)."""
    model, processor = load_model_and_processor(model_dir, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    out = {}
    for organ, seed in CARD_SEEDS.items():
        report = grounding_report(model, processor, fresh_cases(organ, n, seed, cfg.image_size), cfg.crop_pixels,
                                  (48, 24), seed=seed, crop_context=cfg.crop_context)
        out[organ] = dict(seed=seed, **report)
    return out


def continued_card(cfg: PretrainConfig) -> Optional[dict]:
    """The ``card.json`` of the shipped base `cfg.init_from` continues (an exported folder with a card, such as
    ``zoomdx_lib/base``), with its MODEL_CARD.md text as ``text``; None when it continues a run's checkpoint."""
    if not cfg.init_from or not (Path(cfg.init_from) / "card.json").exists():
        return None
    card = json.loads((Path(cfg.init_from) / "card.json").read_text())
    text = Path(cfg.init_from) / "MODEL_CARD.md"
    return dict(card, text=text.read_text() if text.exists() else "")


def earlier_stage(cfg: PretrainConfig) -> Optional[tuple[PretrainConfig, float]]:
    """The config and training seconds of the run `cfg.init_from` continues (None for a first stage, and for
    a stage that continues a shipped base: :func:`continued_card` describes that one)."""
    if not cfg.init_from or continued_card(cfg) is not None:
        return None
    run = Path(cfg.init_from).parent
    first = PretrainConfig.from_dict(json.loads((run / "pretrain_config.json").read_text()))
    return first, sum(r.get("seconds", 0.0) for r in read_log(run))


def stage_curves(run_dir, cfg: PretrainConfig) -> tuple[list[dict], list[dict]]:
    """(history, held-out rows) of the run, preceded by those of the stage it continues; a second stage's
    steps are counted on from the first's last step and every row says its `stage` (1 or 2)."""
    history, evals = read_log(run_dir), read_evals(run_dir)
    if not cfg.init_from:
        return history, evals
    card = continued_card(cfg)
    if card is not None:   # a later stage of a shipped base: its card holds the earlier stages' rows
        h0, e0 = card.get("history", []), card.get("curves", [])
        done = max((r["step"] for r in e0 + h0), default=0)
        stage = max((r.get("stage", 1) for r in e0 + h0), default=1) + 1
        shift = lambda rows: [dict(r, step=r["step"] + done, stage=stage) for r in rows]   # noqa: E731
        return h0 + shift(history), e0 + shift(evals)
    run1 = Path(cfg.init_from).parent
    done = int(Path(cfg.init_from).name.rsplit("-", 1)[-1])        # checkpoint-002000 -> 2000
    h1 = [dict(r, stage=1) for r in read_log(run1) if r["step"] <= done]
    e1 = [dict(r, stage=1) for r in read_evals(run1) if r["step"] <= done]
    shift = lambda rows: [dict(r, step=r["step"] + done, stage=2) for r in rows]   # noqa: E731
    return h1 + shift(history), e1 + shift(evals)


def _stage_data(cfg: PretrainConfig) -> str:
    """What one stage's dialogues hold, and its curriculum if it has one (the card's "data:" clause)."""
    fixed = ("turn 1 `<think>Focus on the lesion.</think>` + the tool call, the zoom tool's crop of that box, turn 2 "
             "the answer JSON")
    if not cfg.rationales:
        turns = fixed + " (no rationale)"
    else:
        turns = (f"{cfg.rationales:.0%} of cases written exactly as the SFT data writes them (a search rationale "
                 f"before the call, a diagnostic rationale before the answer: LoRA never trains the embeddings, so "
                 f"SFT's words must be known to the base), the rest with {fixed}")
    if cfg.curriculum_steps:
        turns += f"; curriculum: no isoechoic lesion in the first {cfg.curriculum_steps} steps"
    if cfg.single_turn:
        turns += (f"; {cfg.single_turn:.0%} of cases written as the no-zoom baseline's one-turn dialogue (full view "
                  f"and question, answered directly)")
    if cfg.real_share:
        turns += (f"; {cfg.real_share:.0%} of cases drawn from the REAL data set {cfg.real_data} "
                  f"(folds {', '.join(map(str, cfg.real_folds))} only), boxes from its masks")
    if cfg.synth_style != "default":
        turns += (f"; synthetic {', '.join(STYLES[cfg.synth_style]['organs'])} cases imaged in the "
                  f"{cfg.synth_style!r} style (zoomdx_lib.data.synth.STYLES)")
    if cfg.crop_context:
        turns += (f"; the crop widened by {cfg.crop_context:.0%} of the box's sides on each side (surrounding tissue): "
                  f"rollouts must crop the same way")
    return turns


def model_card(cfg: PretrainConfig, numbers: dict, run_dir, seconds: Optional[float], note: Optional[str] = None) -> str:
    """The shipped base's MODEL_CARD.md (both stages when `cfg` continues an earlier run); `note` (what the
    base was chosen on) becomes its "Why this base was shipped" section."""
    rows = "\n".join(
        f"| {o} {'(zero-shot organ)' if o not in cfg.organs else ''} | {r['seed']} | {r['n']} | "
        f"{r['miou']:.3f} [{r['miou_ci'][0]:.3f}, {r['miou_ci'][1]:.3f}] | {r['mean_box_miou']:.3f} | "
        f"{r['acc']:.3f} [{r['acc_ci'][0]:.3f}, {r['acc_ci'][1]:.3f}] | {r['majority_acc']:.3f} | "
        f"{r['tool_call_valid']:.2f} |" for o, r in numbers.items())
    stage1 = earlier_stage(cfg)
    hours = f"{seconds / 3600:.2f} h" if seconds else "see log.jsonl"
    previous = continued_card(cfg)
    if previous is not None:
        return _continued_model_card(cfg, previous, rows, run_dir, hours, _note_section(note))
    if stage1:
        first, first_s = stage1
        second_s = seconds or 0.0
        hours = f"{(first_s + second_s) / 3600:.2f} h ({first_s / 60:.0f} + {second_s / 60:.0f} min)"
        recipe = (f"in two stages: {first.steps} steps of batch {first.batch_size} (lr {first.lr}, cosine, "
                  f"{first.warmup} warm-up steps, stream seed {first.seed}; data: {_stage_data(first)}), then {cfg.steps} "
                  f"steps of batch {cfg.batch_size} from its last checkpoint (lr {cfg.lr}, a fresh cosine schedule, "
                  f"{cfg.warmup} warm-up steps, stream seed {cfg.seed}; data: {_stage_data(cfg)})")
    else:
        recipe = (f"for {cfg.steps} steps of batch {cfg.batch_size} (lr {cfg.lr}, cosine, {cfg.warmup} warm-up "
                  f"steps; data: {_stage_data(cfg)})")
    names = lambda losses: ", ".join(losses) or "none"     # noqa: E731
    aux = names(cfg.aux)
    if stage1 and tuple(first.aux) != tuple(cfg.aux):
        aux = f"{names(first.aux)} in stage 1, {aux} in stage 2"
    real_clause = (", and real cases where the data clause of the recipe says so" if cfg.real_share or
                   (stage1 and stage1[0].real_share) else ", never real images")
    return f"""# ZoomDx tiny base (Qwen2.5-VL architecture, trained from scratch)

A stock `Qwen2_5_VLForConditionalGeneration` ({cfg.tiny}) pretrained offline by
`python -m zoomdx_lib.workbook.base` (module `zoomdx_lib.train.pretrain`) {recipe}; {hours} of
training steps' wall time on 2 CPU cores.

**Data**: a stream of freshly generated synthetic {' and '.join(cfg.organs)} cases, {cfg.image_size} px,
generator seeds `zoomdx_lib.train.pretrain.stream_seed(SEED, organ)` with each stage's stream seed (never
a data split's seed, never thyroid){real_clause}. Each case is a complete Zoom-then-Diagnose
dialogue with the true box and the zoom tool's crop of it.

**Losses**: cross-entropy on both assistant turns + auxiliary {aux}
(weights {cfg.aux_weights}); the auxiliary heads are dropped at export.

**Held-out numbers** (`python -m zoomdx_lib.eval.grounding --organ ORGAN --n 64 --seed SEED`): box
from the model's own greedy turn 1; accuracy from turn 2 given the crop of the TRUE box; mean-box
and majority are constant answers chosen in hindsight on the same cases; 95 % bootstrap intervals.

| organ | seed | n | mIoU [95 % CI] | mean box | accuracy [95 % CI] | majority | valid calls |
|---|---|---|---|---|---|---|---|
{rows}

Training and held-out curves: `{Path(run_dir).name}/log.jsonl`, `eval.jsonl` of the run that made it.
Integrity: `checksums.json` (SHA-256 per file) is checked when the folder is loaded.
{_note_section(note)}"""


def _note_section(note: Optional[str]) -> str:
    """The card's "Why this base was shipped" section ('' without a note)."""
    return f"\n## Why this base was shipped\n\n{note.strip()}\n" if note else ""


def _continued_model_card(cfg: PretrainConfig, previous: dict, rows: str, run_dir, hours: str, note: str) -> str:
    """The card of a stage that continues a shipped base: this stage's recipe, then the continued base's card."""
    before = previous.get("text", "").split("\n", 1)[-1].strip()   # without its title line
    return f"""# ZoomDx tiny base (Qwen2.5-VL architecture, trained from scratch)

The shipped base described below, continued by `python -m zoomdx_lib.workbook.base --init-from {cfg.init_from}`
(module `zoomdx_lib.train.pretrain`) for {cfg.steps} more steps of batch {cfg.batch_size} (lr {cfg.lr}, a fresh
cosine schedule, {cfg.warmup} warm-up steps, stream seed {cfg.seed}, fresh auxiliary heads {", ".join(cfg.aux) or "none"};
data: {_stage_data(cfg)}); {hours} of this stage's training steps' wall time on 2 CPU cores.

**Held-out numbers of this model** (`python -m zoomdx_lib.eval.grounding --organ ORGAN --n 64 --seed SEED`): box
from the model's own greedy turn 1; accuracy from turn 2 given the crop of the TRUE box; mean-box
and majority are constant answers chosen in hindsight on the same cases; 95 % bootstrap intervals.

| organ | seed | n | mIoU [95 % CI] | mean box | accuracy [95 % CI] | majority | valid calls |
|---|---|---|---|---|---|---|---|
{rows}

Training and held-out curves: `{Path(run_dir).name}/log.jsonl`, `eval.jsonl` of the run that made it, after the
continued base's (``card.json``). Integrity: `checksums.json` (SHA-256 per file) is checked when the folder is loaded.
{note}
## The base it continues (its card, as shipped)

{before}
"""


def ship(run_dir, cfg: PretrainConfig, dest: Path = SHIPPED_BASE, n: int = 64, note: Optional[str] = None) -> dict:
    """Copy the run's exported model into `dest` with its card and checksums; returns the card numbers.
    `note` (what the base was chosen on) becomes the card's "Why this base was shipped" section."""
    src = Path(run_dir) / "model"
    numbers = card_numbers(src, cfg, n)
    seconds = sum(r.get("seconds", 0.0) for r in read_log(run_dir)) or None
    history, curves = stage_curves(run_dir, cfg)
    previous = continued_card(cfg)
    card_text = model_card(cfg, numbers, run_dir, seconds, note)   # before dest is replaced: it may be the continued base
    if previous is not None:   # keep the continued base's full history; thin only this stage's rows
        n_prev = len(previous.get("history", []))
        history = history[:n_prev] + history[n_prev:][::5]
    else:
        history = history[::5]
    card = dict(config=dataclasses.asdict(cfg), held_out=numbers, curves=curves, history=history)
    if previous is not None:
        card["continues"] = dict(config=previous["config"], held_out=previous.get("held_out"),
                                 **({"continues": previous["continues"]} if "continues" in previous else {}))
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    (dest / "MODEL_CARD.md").write_text(card_text)
    atomic_write_json(dest / "card.json", card)
    write_checksums(dest)
    return numbers


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.workbook.base", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/base", help="run folder (resumes from its latest checkpoint)")
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps)
    ap.add_argument("--batch-size", type=int, default=PretrainConfig.batch_size)
    ap.add_argument("--lr", type=float, default=PretrainConfig.lr)
    ap.add_argument("--aux", default=",".join(PretrainConfig.aux),
                    help=f"auxiliary losses, comma-separated, from {','.join(AUX_LOSSES)} ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=PretrainConfig.warmup)
    ap.add_argument("--rationales", type=float, default=0.0,
                    help="share of cases written with the SFT data's rationales (teaches the base SFT's words)")
    ap.add_argument("--init-from", default=None,
                    help="continue from this pretraining checkpoint (e.g. runs/base/checkpoint-002000) with a new "
                         "optimizer and schedule; use another --seed so the stream brings new cases. An exported "
                         "model (e.g. zoomdx_lib/base) works too: its auxiliary heads start fresh")
    ap.add_argument("--curriculum", type=int, default=0,
                    help="easy contrast first: this many first steps draw no isoechoic lesion")
    ap.add_argument("--single-turn", type=float, default=0.0,
                    help="share of cases answered in one turn from the full view (the no-zoom baseline's format)")
    ap.add_argument("--real-data", default=None,
                    help="a real data SPEC mixed into the stream, e.g. bus_bra:bus_bra (relative to $ZOOMDX_DATA)")
    ap.add_argument("--real-folds", default="1,2", help="its folds (BUS-BRA's test fold 3 is refused)")
    ap.add_argument("--real-share", type=float, default=0.0, help="share of the stream drawn from --real-data")
    ap.add_argument("--crop-context", type=float, default=0.0,
                    help="widen the crop by this fraction of the box's sides (the tissue around the lesion)")
    ap.add_argument("--synth-style", default="default",
                    help="imaging style of the synthetic cases of the style's organs (zoomdx_lib.data.synth.STYLES; "
                         "bus_bra: breast imaged closer to BUS-BRA's scanner)")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--ship", action="store_true", help=f"after training, copy the model into {SHIPPED_BASE}")
    ap.add_argument("--card-note", default=None, help="with --ship: what the base was chosen on (a card section)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup=args.warmup, init_from=args.init_from, rationales=args.rationales, curriculum_steps=args.curriculum, aux=tuple(a for a in args.aux.split(",") if a),
                         single_turn=args.single_turn, real_data=args.real_data, real_share=args.real_share,
                         real_folds=tuple(int(f) for f in args.real_folds.split(",") if f),
                         crop_context=args.crop_context, synth_style=args.synth_style)
    result = pretrain(cfg, args.out, evaluate=held_out_eval(cfg), eval_every=args.eval_every)
    last = result["evals"][-1] if result["evals"] else {}
    print(json.dumps({"model": result["model"], "held_out_miou": last.get("miou"), "held_out_acc": last.get("acc")}))
    if args.ship:
        print(json.dumps(ship(args.out, cfg, note=args.card_note)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

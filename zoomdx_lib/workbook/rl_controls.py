"""Positive controls: GRPO runs whose reward asks for one thing, to prove the RL can move it.

``python -m zoomdx_lib.workbook.rl_controls --control constant|iou|accuracy --steps N --out DIR
[--run-dir RUN] [--set field=value ...]`` trains GRPO from the zoom SFT adapter of a cpu-chain run folder
(`--run-dir`; without it the cpu profile's zoom SFT start is trained into ``DIR/sft_start`` once and reused)
with one control reward (:func:`zoomdx_lib.rl.controls.control_rewards`):

* ``constant``  1 when the answer is the first label of the attribute's vocabulary, whatever the image;
  read as the share of 8 sampled rollouts (T = 0.7) that give that answer;
* ``iou``       the IoU of the tool call's box; read as greedy mIoU on c = 1 cases;
* ``accuracy``  1 for the right answer; read as greedy accuracy on c = 1 cases;

then evaluates the SFT start and the trained adapter on the same fresh cases (liver + breast, a split no
run uses: :func:`zoomdx_lib.data.fresh.fresh_items`) and prints one JSON line with ``control``, ``steps``,
``start``, ``end``, ``delta`` and ``delta_ci`` (paired over cases, 95 % bootstrap); iou and accuracy also over the
8 sampled rollouts (``sampled``). ``--degrade box=0.5|answer=0.6`` starts from a deliberately degraded start (a
recovery control), ``--supervised`` trains on the true dialogues instead (the supervised reference). Training
resumes from its checkpoints and each evaluation is cached, so a killed run continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
from peft import PeftModel

from ..config import Profile, get_profile, parse_key_values
from ..data.fresh import fresh_items
from ..data.store import build_synthetic_splits, load_items
from ..eval.control_reads import control_values, curve_summary, group_headroom, paired_change  # noqa: F401 (tests, notebooks)
from ..eval.generate import Method, evaluate_methods
from ..io import atomic_write_json
from ..model.load import load_model_and_processor
from ..rl.controls import CONTROLS, control_score_group, degraded_records, parse_degrade
from ..train.grpo import train_grpo
from ..train.loop import read_log
from ..train.recipes import run_sft
from ..train.sft import dialogue_records, encode_records, train
from .viz_rl import curve_points

EVAL_ORGANS = ("liver", "breast")


def _start(base_dir: Path, profile: Profile) -> dict:
    """{base, adapter, data} of a folder holding ``models/sft_zoom_lora`` (on ``models/sft_zoom_full`` when a
    from-scratch stage made one, else on the profile's checkpoint) and ``data/``."""
    full = base_dir / "models" / "sft_zoom_full"
    return dict(base=str(full if full.exists() else profile.model.path),
                adapter=str(base_dir / "models" / "sft_zoom_lora"), data=str(base_dir / "data"))


def sft_start(profile: Profile, out_dir, run_dir=None, progress: bool = True) -> dict:
    """The zoom SFT start of the controls: {base, adapter, data} of a cpu-chain run folder (`run_dir`), or
    trained once into ``out_dir/sft_start`` with the profile's data and SFT recipe (resumable, reused)."""
    if run_dir is not None:
        start = _start(Path(run_dir), profile)
        if not Path(start["adapter"], "adapter_config.json").exists():
            raise FileNotFoundError(f"{run_dir}: no zoom SFT adapter at models/sft_zoom_lora (run notebook 02 first)")
        return start
    start_dir = Path(out_dir) / "sft_start"
    if not (start_dir / "data" / "splits.json").exists():
        build_synthetic_splits(profile, start_dir / "data", progress=progress)
    if not (start_dir / "models" / "sft_zoom_lora" / "adapter_config.json").exists():
        run_sft(profile, start_dir, "zoom", progress=progress)
    return _start(start_dir, profile)


def grpo_from_start(profile: Profile, start: dict, cfg, ckpt_dir, adapter_dir, variant: str,
                    reward_fn=None, progress: bool = True, seed: Optional[int] = None) -> list[dict]:
    """GRPO with `cfg` from the SFT start's adapter (resumable from `ckpt_dir`), saved to `adapter_dir`;
    a finished run (adapter saved, every step logged) is not loaded again. Returns the log rows."""
    ckpt_dir, adapter_dir = Path(ckpt_dir), Path(adapter_dir)
    if (adapter_dir / "adapter_config.json").exists() and len(read_log(ckpt_dir)) >= cfg.steps:
        return read_log(ckpt_dir)
    model, processor = load_model_and_processor(start["base"], device=profile.device, **profile.model.pixel_bounds)
    model = PeftModel.from_pretrained(model, start["adapter"], is_trainable=True)
    log = train_grpo(model, processor, load_items(start["data"], "train"), cfg, ckpt_dir, variant, profile.rollout,
                     profile.hp, profile.seed if seed is None else seed, progress=progress, reward_fn=reward_fn)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    return log


def train_control(control: str, profile: Profile, start: dict, out_dir, progress: bool = True,
                  seed: Optional[int] = None) -> list[dict]:
    """GRPO with the control's reward from the SFT start for ``profile.grpo.steps`` steps, advantages normalised
    within each group (estimator "group", so only the control's reward reaches the update); the adapter is
    saved to ``out_dir/adapter``, checkpoints and ``log.jsonl`` go to ``out_dir/checkpoints``."""
    out_dir = Path(out_dir)
    # plain group normalisation: the credit estimator would add the paper's group term to the control's reward
    cfg = dataclasses.replace(profile.grpo, estimator="group")
    return grpo_from_start(profile, start, cfg, out_dir / "checkpoints", out_dir / "adapter", f"control:{control}",
                           control_score_group(control), progress, seed)


def evaluate_adapter(control: str, profile: Profile, method: Method, items, cache_dir, dataset: str, seed: int,
                     progress: bool = True, mode: Optional[str] = None) -> list[dict]:
    """Generation records of `method` on `items` for this control (`mode`, by default sampled G rollouts for
    "constant" and greedy otherwise), through the workbook's generation cache in `cache_dir` (reused while the
    weights and the settings are the same)."""
    mode = mode or ("sample" if control == "constant" else "greedy")
    return evaluate_methods([method], {dataset: items}, profile, cache_dir, modes=(mode,), seeds=(seed,),
                            progress=progress)[(method.name, dataset, mode, seed)]


def fresh_eval(profile: Profile, n_eval: int, eval_tag: str) -> tuple[list, str, int]:
    """(items, dataset name, generation seed) of the controls' fresh evaluation cases: `n_eval` per organ of
    :data:`EVAL_ORGANS` from split ``fresh_{eval_tag}``, the same for every control and reference."""
    return fresh_items(profile, EVAL_ORGANS, n_eval, eval_tag), f"fresh_{eval_tag}_{n_eval}", profile.seed + 7919


def arm_name(control: str, steps: int, overrides: Optional[dict] = None) -> str:
    """The folder name of one control run: control, steps and a short digest of the overrides.

    >>> arm_name("iou", 60), arm_name("iou", 60, {"grpo__lr": 3e-4}) == arm_name("iou", 60, {"grpo__lr": 3e-4})
    ('iou_60', True)
    """
    if not overrides:
        return f"{control}_{steps}"
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return f"{control}_{steps}_{digest}"


DEGRADE_STEPS, DEGRADE_LR = 100, 1e-3   # the degraded start: 100 LoRA steps on the degraded dialogues, at SFT's lr


def run_control(control: str, steps: int, out_dir, run_dir=None, overrides: Optional[dict] = None,
                n_eval: int = 60, eval_tag: str = "controls", progress: bool = True,
                degrade: Optional[tuple[str, float]] = None, train_seed: Optional[int] = None) -> dict:
    """Train and evaluate one positive control; returns (and writes to ``out_dir/{arm_name(...)}/result.json``)
    the result row. `n_eval` fresh cases per organ (liver, breast) from split ``fresh_{eval_tag}``.

    `degrade` = (kind, amount) (a recovery control): GRPO starts instead from the SFT start trained
    ``DEGRADE_STEPS`` more steps on dialogues with a deliberate error (boxes scaled by `amount`, or the
    constant answer in a share `amount` of them), an error the image does not decide; the start and the end
    are both paired against that degraded start. `train_seed` (a second training of the same control) seeds
    GRPO's prompt sampler and rollouts instead of the profile's seed; the start and the cases stay the same."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; choose one of {CONTROLS}")
    t0 = time.perf_counter()
    profile = get_profile("cpu", **dict(overrides or {}, grpo__steps=steps))
    out_dir = Path(out_dir)
    start, start_name, start_gen = sft_start(profile, out_dir, run_dir, progress), "sft_start", out_dir / "generations"
    arm = out_dir / arm_name(control, steps, overrides)
    if degrade is not None:
        start_name = f"sft_start_{degrade[0]}{degrade[1]:g}"
        start = dict(start, adapter=train_supervised(profile, start, out_dir / start_name, DEGRADE_STEPS, DEGRADE_LR,
                                                     progress, degrade=degrade))
        start_gen = out_dir / start_name / "generations"
        arm = arm.with_name(f"{arm.name}_from_{degrade[0]}{degrade[1]:g}")
    if train_seed is not None:
        arm = arm.with_name(f"{arm.name}_s{train_seed}")
    log = train_control(control, profile, start, arm, progress, train_seed)
    items, dataset, seed = fresh_eval(profile, n_eval, eval_tag)
    first = Method(start_name, "zoom", start["base"], start["adapter"])
    before = evaluate_adapter(control, profile, first, items, start_gen, dataset, seed, progress)
    trained = Method(arm.name, "zoom", start["base"], str(arm / "adapter"))
    after = evaluate_adapter(control, profile, trained, items, arm / "generations", dataset, seed, progress)
    sampled = {}
    if control != "constant":   # also what the reward itself averages: the mean over G sampled rollouts
        pair = [evaluate_adapter(control, profile, m, items, d, dataset, seed, progress, mode="sample")
                for m, d in ((first, start_gen), (trained, arm / "generations"))]
        sampled = dict(sampled=paired_change(control, *pair, sampled=True), headroom_start=group_headroom(pair[0]),
                       headroom_end=group_headroom(pair[1]))
    row = dict(control=control, steps=steps, **paired_change(control, before, after), **sampled,
               reward_curve=curve_summary(log), overrides={k: v for k, v in (overrides or {}).items()},
               start_from=start_name, train_seed=profile.seed if train_seed is None else train_seed,
               tool_call_valid_end=float(np.mean([r["rollouts"][0]["tool_error"] is None for r in after])),
               seconds=time.perf_counter() - t0)
    atomic_write_json(arm / "result.json", row)
    return row


def train_supervised(profile: Profile, start: dict, out_dir, steps: int, lr: float, progress: bool = True,
                     degrade: Optional[tuple[str, float]] = None) -> str:
    """The supervised reference of a control: the SFT start's adapter trained on for `steps` more LoRA steps
    (batch ``profile.sft.batch_size``, cosine from `lr`) on the true zoom dialogues of the same training
    cases, i.e. with the true box and the true answer in place of a reward. With `degrade` = (kind, amount),
    the dialogues carry that error (:func:`~zoomdx_lib.rl.controls.degraded_records`): the degraded start of a
    recovery control. Resumable; returns the adapter."""
    out_dir = Path(out_dir)
    adapter = out_dir / "adapter"
    if (adapter / "adapter_config.json").exists():
        return str(adapter)
    model, processor = load_model_and_processor(start["base"], device=profile.device, **profile.model.pixel_bounds)
    model = PeftModel.from_pretrained(model, start["adapter"], is_trainable=True)
    records = dialogue_records(start["data"], "train", "zoom")
    if degrade is not None:
        records = degraded_records(records, *degrade, seed=profile.seed)
    examples = encode_records(records, start["data"], processor, progress, "encode train (zoom)")
    train(model, processor, examples, steps, profile.sft.batch_size, lr, out_dir / "checkpoints",
          profile.sft.checkpoint_every, True, profile.seed + 11, warmup=profile.sft.lr_warmup_steps,
          progress=progress, device=profile.device)
    model.save_pretrained(adapter, safe_serialization=True)
    return str(adapter)


def run_supervised(control: str, steps: int, out_dir, run_dir=None, lr: float = 1e-4, n_eval: int = 60,
                   overrides: Optional[dict] = None, eval_tag: str = "controls", progress: bool = True) -> dict:
    """How far supervision moves a control's quantity: the SFT start trained `steps` more steps on the true
    dialogues (:func:`train_supervised`), and the base with no adapter, each paired against the SFT start on
    the same fresh cases as :func:`run_control` (`overrides` as there). Writes
    ``out_dir/supervised_{steps}_{lr}[_digest]/result_{control}.json``."""
    if control not in ("iou", "accuracy"):
        raise ValueError(f"the supervised reference reads 'iou' or 'accuracy', got {control!r}")
    t0 = time.perf_counter()
    profile = get_profile("cpu", **dict(overrides or {}))
    out_dir = Path(out_dir)
    start = sft_start(profile, out_dir, run_dir, progress)
    digest = arm_name("supervised", steps, overrides)[len(f"supervised_{steps}"):]   # "" or "_" + the overrides' digest
    arm = out_dir / f"supervised_{steps}_{lr:g}{digest}"
    adapter = train_supervised(profile, start, arm, steps, lr, progress)
    items, dataset, seed = fresh_eval(profile, n_eval, eval_tag)
    before = evaluate_adapter(control, profile, Method("sft_start", "zoom", start["base"], start["adapter"]), items,
                              out_dir / "generations", dataset, seed, progress)
    after = evaluate_adapter(control, profile, Method(arm.name, "zoom", start["base"], adapter), items,
                             arm / "generations", dataset, seed, progress)
    base = evaluate_adapter(control, profile, Method("base", "zoom", start["base"]), items,
                            out_dir / "generations", dataset, seed, progress)
    sft_log = read_log(Path(start["adapter"]).parent.parent / "checkpoints" / "sft_zoom_lora")
    row = dict(control=control, reference="supervised", steps=steps, lr=lr, dialogues=steps * profile.sft.batch_size,
               **paired_change(control, before, after),
               start_vs_base=paired_change(control, base, before),
               start_dialogues=len(sft_log) * profile.sft.batch_size,
               loss_curve=curve_summary(read_log(arm / "checkpoints"), key="loss"),
               seconds=time.perf_counter() - t0)
    atomic_write_json(arm / f"result_{control}.json", row)
    return row


def collect_controls(out_dir) -> list[dict]:
    """Every finished control under `out_dir` (``*/result.json``) with its training curve (the plotted keys),
    written to ``out_dir/controls.json``; returns the rows, ordered by control and name."""
    out_dir = Path(out_dir)
    rows = []
    for result in sorted(out_dir.glob("*/result.json")):
        row = dict(json.loads(result.read_text()), name=result.parent.name)
        log = read_log(result.parent / "checkpoints")
        row["curve"] = curve_points(log)
        rows.append(row)
    for result in sorted(out_dir.glob("supervised_*/result_*.json")):   # their curve is a loss, kept in the row
        row = json.loads(result.read_text())
        rows.append(dict(row, name=f"{result.parent.name}/{row['control']}"))
    rows.sort(key=lambda r: (CONTROLS.index(r["control"]), r["name"]))
    atomic_write_json(out_dir / "controls.json", rows)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--control", choices=CONTROLS, required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", required=True, help="folder for the SFT start (when no --run-dir), arms and evaluations")
    ap.add_argument("--run-dir", default=None, help="a cpu-chain run folder whose zoom SFT adapter is the start")
    ap.add_argument("--n-eval", type=int, default=60, help="fresh cases per organ (liver, breast)")
    ap.add_argument("--set", nargs="*", default=[], metavar="stage__field=value",
                    help="profile overrides, e.g. grpo__lr=3e-4 grpo__ppo_epochs=4")
    ap.add_argument("--supervised", action="store_true",
                    help="instead of GRPO, train the SFT start --steps more steps on the true dialogues (the "
                         "supervised reference of the iou and accuracy controls) and pair it and the base with the start")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of --supervised")
    ap.add_argument("--degrade", default=None, metavar="KIND=AMOUNT",
                    help="a recovery control: start GRPO from the SFT start trained on dialogues with a deliberate "
                         "error, box=SCALE (boxes SCALE times the true sides) or answer=SHARE (the constant answer "
                         "in that share of the dialogues)")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="seed of GRPO's prompts and rollouts (a second training of a control; default the profile's)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.supervised:
        row = run_supervised(args.control, args.steps, args.out, args.run_dir, args.lr, args.n_eval,
                             parse_key_values(args.set), progress=not args.no_progress)
        collect_controls(args.out)
        print(json.dumps(row))
        return
    row = run_control(args.control, args.steps, args.out, args.run_dir, parse_key_values(args.set), args.n_eval,
                      progress=not args.no_progress, degrade=parse_degrade(args.degrade), train_seed=args.train_seed)
    collect_controls(args.out)
    print(json.dumps(row))


if __name__ == "__main__":
    main()

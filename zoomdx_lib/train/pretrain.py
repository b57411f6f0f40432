"""Pretraining the offline tiny Qwen2.5-VL to find lesions and read them (the shipped base).

Long because the stage is one piece: its stream of cases, the dialogue each case becomes, the dense
targets, the auxiliary heads and losses, and the resumable loop all share one config.

Text loss alone never makes the tiny model look: its box stays near the mean box (see the README's
"base" section). This stage trains every weight from scratch on a stream of freshly generated
liver and breast cases (never a test split's seed, never thyroid; real cases only when asked, see below),
each a complete Zoom-then-Diagnose dialogue with the TRUE box:

    image + question -> "<think>Focus on the lesion.</think> <tool_call>{bbox_2d}</tool_call>"
    crop of that box (the zoom tool's own crop) -> '<answer>{"echo": "Hypoechoic"}</answer>'

with cross-entropy on both assistant turns, plus auxiliary losses that make the vision tower and the
language model ground the box (each switchable, for the ablation):

- ``mask``: a linear head on every merged full-view token predicts the fraction of that token's
  28 x 28 patch inside the lesion box (binary cross-entropy): the tower learns WHERE the lesion is;
- ``pos``: a linear head regresses each token's own (row, column): rotary positions steer attention
  but never enter the values read back, so without it no token can say where it is;
- ``attn``: one head per language-model layer is pulled onto the in-box image tokens at every query
  that predicts a box digit (negative log of its in-box attention mass). Off by default: with ``mask``
  and ``pos`` on, it slowed localisation and ended worse on breast (the README's ablation).

The heads live beside the model during training (saved in the checkpoints as
``aux_heads.safetensors``) and are dropped at export, so the result is a stock
`Qwen2_5_VLForConditionalGeneration` folder that every later stage loads like any checkpoint.
An optional curriculum (``curriculum_steps``) draws no isoechoic lesion in the first steps (easy
contrast first). Two options change the stream: ``single_turn`` writes a share of its cases as the
no-zoom baseline's one-turn dialogue (so a single-turn arm starts from a base that has read full views
too), and ``real_share`` draws a share from a real data set's train folds (``real_data``, ``real_folds``;
BUS-BRA's test fold is refused), boxes from their masks; ``synth_style`` images the synthetic cases of
the style's organs the way :data:`zoomdx_lib.data.synth.STYLES` says (e.g. closer to BUS-BRA's breast
scanner). Case i of the stream is a pure function of (seed, organ, i), and the loop
(:mod:`zoomdx_lib.train.loop`) draws the indices, so a run is deterministic per seed and resumes
exactly after a kill.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration

from .. import protocol as P
from ..config import PretrainConfig
from ..data.dialogue import build_dialogue, diagnostic_rationale, question_for
from ..data.sources import load_cases
from ..data.synth import STYLES, check_style, generate_samples
from ..geometry import model_input_size, processor_pixel_bounds
from ..io import append_jsonl, atomic_write_json, read_jsonl
from ..model import chat
from ..model.build import build_tiny_checkpoint
from ..model.load import load_model_and_processor
from ..rl.rollout import oracle_turn1
from ..rl.zoom import zoom
from .common import trainable_adamw
from .loop import LoopConfig, run_loop
from .sft import SFTExample, cosine_schedule, encode_conversation

HEADS_FILE = "aux_heads.safetensors"
STREAM_SIZE = 2 ** 31 - 1        # indices of the case stream the loop draws from
TOKEN = 28                       # model-input pixels per merged visual token (patch 14 x merge 2)


def stream_seed(seed: int, organ: str) -> int:
    """The generator seed of the pretraining stream of `organ`; a string no data split uses
    (splits hash ``zoomdx|seed|split|organ``, see :func:`zoomdx_lib.data.store.split_seed`)."""
    return zlib.crc32(f"zoomdx-pretrain|{seed}|{organ}".encode()) & 0x7FFFFFFF


def stream_case(cfg: PretrainConfig, index: int, easy: bool = False):
    """Case `index` of the pretraining stream: (sample with its question, RGB image); organs alternate.

    easy: a case of the curriculum (the first ``cfg.curriculum_steps`` steps). An isoechoic lesion (within a
    few dB of its background, the hardest to find) is replaced by the first case that is not isoechoic at
    index // len(organs) + k * STREAM_SIZE, k = 1, 2, ... of the organ's stream (still a pure function of
    the index); any other case is the same as without the curriculum.
    """
    if is_real(cfg, index):
        return real_case(cfg, index)
    organ = cfg.organs[index % len(cfg.organs)]
    style = cfg.synth_style if organ in STYLES[cfg.synth_style]["organs"] else "default"
    for copy in range(64):             # P(isoechoic) ~ 1/4 per copy: 64 copies never run out in practice
        sample, image = next(generate_samples(organ, 1, seed=stream_seed(cfg.seed, organ), size=cfg.image_size,
                                              split="pretrain", start=index // len(cfg.organs) + copy * STREAM_SIZE,
                                              style=style))
        if not easy or sample.meta["true_attributes"]["echo"] != "Isoechoic":
            break
    sample.question = question_for(sample.attribute, f"pretrain:{cfg.seed}:{index}")
    return sample, image.convert("RGB")


def _share(cfg: PretrainConfig, kind: str, index: int, share: float) -> bool:
    """Whether case `index` falls in the stream's `share` of `kind` (a pure function of seed, kind and index)."""
    return share > 0 and (zlib.crc32(f"{kind}|{cfg.seed}|{index}".encode()) % 10000) < share * 10000


_REAL_CASES: dict = {}


def real_cases(cfg: PretrainConfig) -> list:
    """The (sample, RGB image) pairs of ``cfg.real_data``'s ``cfg.real_folds``, imported once per process."""
    key = (cfg.real_data, tuple(cfg.real_folds))
    if key not in _REAL_CASES:
        _REAL_CASES[key] = load_cases(cfg.real_data, folds=cfg.real_folds)[0]
    return _REAL_CASES[key]


def real_case(cfg: PretrainConfig, index: int):
    """Case `index` of the stream when it is a real one: a case of the real train folds chosen by the index,
    its question drawn as for synthetic cases."""
    cases = real_cases(cfg)
    sample, image = cases[zlib.crc32(f"real-pick|{cfg.seed}|{index}".encode()) % len(cases)]
    sample = dataclasses.replace(sample, question=question_for(sample.attribute, f"pretrain:{cfg.seed}:{index}"))
    return sample, image.convert("RGB")


def is_real(cfg: PretrainConfig, index: int) -> bool:
    """Whether case `index` of the stream comes from the real train folds (``cfg.real_share`` of them)."""
    return _share(cfg, "real", index, cfg.real_share)


def is_single_turn(cfg: PretrainConfig, index: int) -> bool:
    """Whether case `index` is written as a one-turn dialogue from the full view (``cfg.single_turn`` of them).

    >>> cfg = PretrainConfig(single_turn=0.25)
    >>> 0.2 < sum(is_single_turn(cfg, i) for i in range(2000)) / 2000 < 0.3
    True
    """
    return _share(cfg, "single", index, cfg.single_turn)


def with_rationale(cfg: PretrainConfig, index: int) -> bool:
    """Whether case `index` of the stream is written with the SFT data's rationales (a pure function of the index).

    >>> cfg = PretrainConfig(rationales=0.5)
    >>> 0.45 < sum(with_rationale(cfg, i) for i in range(2000)) / 2000 < 0.55
    True
    """
    return _share(cfg, "rationale", index, cfg.rationales)


@dataclass
class PretrainExample:
    """One encoded dialogue with the dense targets of its full-view tokens (raster order)."""

    example: SFTExample
    inside: torch.Tensor     # [tokens] fraction of each merged token's patch inside the true box
    position: torch.Tensor   # [tokens, 2] (row, column) of each token, scaled to [0, 1]


def dense_targets(box_model: Sequence[float], grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """In-box fraction and scaled (row, column) of every merged token of a `grid_hw` token grid.

    >>> inside, pos = dense_targets((28, 0, 56, 28), (2, 3))
    >>> inside.tolist()
    [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    >>> pos[4].tolist()
    [1.0, 0.5]
    """
    rows, cols = grid_hw
    x1, y1, x2, y2 = box_model
    edges_x, edges_y = np.arange(cols) * TOKEN, np.arange(rows) * TOKEN
    fx = np.clip(np.minimum(edges_x + TOKEN, x2) - np.maximum(edges_x, x1), 0, TOKEN) / TOKEN
    fy = np.clip(np.minimum(edges_y + TOKEN, y2) - np.maximum(edges_y, y1), 0, TOKEN) / TOKEN
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pos = np.stack([r.reshape(-1) / max(1, rows - 1), c.reshape(-1) / max(1, cols - 1)], 1)
    return (torch.tensor(np.outer(fy, fx).reshape(-1), dtype=torch.float32),
            torch.tensor(pos, dtype=torch.float32))


def encode_case(sample, image, processor, crop_pixels: int, rationale: bool = False,
                single_turn: bool = False, crop_context: float = 0.0) -> PretrainExample:
    """The true-box dialogue of one case, encoded, with the crop the zoom tool itself cuts.

    `single_turn` writes the case as the no-zoom baseline's dialogue instead: the full view and the question
    with :data:`~zoomdx_lib.protocol.ONE_TURN_INSTRUCTION` (the zoom prompt is otherwise the same text, so
    without it the base could not tell which format is asked), answered in one turn (after the full-view
    diagnostic rationale when `rationale`), no tool call and no crop. The dense targets are the same (they
    read the full view).

    `rationale` writes both turns as the SFT data does (:func:`zoomdx_lib.data.dialogue.build_dialogue`:
    a search rationale before the call, a diagnostic one before the answer), so the base also learns the
    words SFT uses; LoRA never trains the embeddings, so words the base never saw stay unreadable after SFT.
    Otherwise turn 1 is ``<think>Focus on the lesion.</think>`` + the call and turn 2 the bare answer.
    `crop_context` widens the crop (not the call, not the dense targets) by that fraction of the box's
    sides, as the zoom tool's ``pad_frac`` does."""
    lo, hi = processor_pixel_bounds(processor)
    msize = model_input_size(image.width, image.height, lo, hi)
    if rationale:
        dialogue = build_dialogue(dataclasses.replace(sample, image_size=image.size), msize)
        turn1, turn2 = dialogue.turn1, dialogue.turn2
    else:
        turn1, turn2 = oracle_turn1(sample, image, processor), P.format_answer(sample.attribute, sample.label)
    call, crop = zoom(turn1, image, msize, crop_pixels, min_pixels=lo, max_pixels=hi)
    if not call.ok:   # the true box is always a valid call; anything else is a bug worth stopping for
        raise ValueError(f"case {sample.id}: the true box {sample.box} gave an invalid tool call ({call.error})")
    if crop_context:
        crop = zoom(turn1, image, msize, crop_pixels, pad_frac=crop_context, min_pixels=lo, max_pixels=hi)[1]
    if single_turn:
        answer = P.format_answer(sample.attribute, sample.label)
        if rationale:
            answer = P.turn(diagnostic_rationale(sample.attribute, sample.label, sample.c, sample.rater_labels,
                                                 f"pretrain-single:{sample.id}", view="full"), answer)
        ex = encode_conversation(processor, chat.single_turn_text(processor, P.one_turn_question(sample.question),
                                                                  answer), [image], sample.id)
    else:
        text = chat.dialogue_text(processor, sample.question, turn1, turn2)
        ex = encode_conversation(processor, text, [image, crop], sample.id)
    grid = ex.images[0][1]
    inside, position = dense_targets(call.box_model, (int(grid[1]) // 2, int(grid[2]) // 2))
    return PretrainExample(ex, inside, position)


class PretrainModel(nn.Module):
    """The VLM with its auxiliary heads; `save_pretrained` / `from_pretrained` keep both for resuming."""

    def __init__(self, vlm):
        super().__init__()
        self.vlm = vlm
        width = vlm.config.vision_config.out_hidden_size
        self.heads = nn.ModuleDict(dict(mask=nn.Linear(width, 1), pos=nn.Linear(width, 2)))
        self._visual = {}
        vlm.model.visual.register_forward_hook(lambda m, i, out: self._visual.__setitem__("tokens", out.pooler_output))

    def visual_tokens(self) -> torch.Tensor:
        """The merged visual tokens of the last forward pass, every image in order, raster order within each."""
        return self._visual["tokens"]

    def save_pretrained(self, path, **kwargs) -> None:
        self.vlm.save_pretrained(path, **kwargs)
        save_file({k: v.detach().contiguous() for k, v in self.heads.state_dict().items()}, str(Path(path) / HEADS_FILE))

    @classmethod
    def from_pretrained(cls, path, dtype=None, **kwargs):
        vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="eager",
                                                                 use_safetensors=True)
        model = cls(vlm)
        heads = Path(path) / HEADS_FILE
        if heads.exists():
            model.heads.load_state_dict(load_file(str(heads)))
        else:   # an exported model (e.g. the shipped base) has no heads: continue it with fresh ones
            warnings.warn(f"{path} has no {HEADS_FILE}: the auxiliary heads start from random weights")
        return model


def pretrain_losses(model: PretrainModel, batch: Sequence[PretrainExample], processor, cfg: PretrainConfig
                    ) -> tuple[torch.Tensor, dict]:
    """(weighted total, {loss name: value}) of one batch; 'text' is the assistant-token cross-entropy."""
    exs = [b.example for b in batch]
    inputs = chat.model_inputs([e.ids for e in exs], [e.images for e in exs], processor, side="right")
    ids = inputs["input_ids"]
    mask = torch.zeros(ids.shape)
    for i, e in enumerate(exs):
        mask[i, :len(e.mask)] = torch.tensor(e.mask, dtype=torch.float)
    out = model.vlm(**inputs, output_attentions="attn" in cfg.aux)
    logits = out.logits[:, :-1].float()
    m = mask[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    losses = {"text": (nll.view_as(m) * m).sum() / m.sum().clamp(min=1)}

    # full-view tokens of each example: the first image of its row in the concatenated visual tokens
    tokens, start, full = model.visual_tokens(), 0, []
    for e in exs:
        counts = [int(g.prod()) // 4 for _, g in e.images]
        full.append(tokens[start:start + counts[0]])
        start += sum(counts)
    full = torch.cat(full)
    inside = torch.cat([b.inside for b in batch])
    if "mask" in cfg.aux:
        losses["mask"] = F.binary_cross_entropy_with_logits(model.heads["mask"](full).squeeze(-1), inside)
    if "pos" in cfg.aux:
        losses["pos"] = F.mse_loss(torch.sigmoid(model.heads["pos"](full)), torch.cat([b.position for b in batch]))
    if "attn" in cfg.aux:
        digits = torch.tensor([processor.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)])
        query = torch.zeros_like(ids, dtype=torch.bool)   # positions whose next token is a box digit
        query[:, :-1] = torch.isin(ids[:, 1:], digits) & (m > 0)
        in_box = torch.zeros(ids.shape)
        for i, b in enumerate(batch):
            img = (ids[i] == processor.image_token_id).nonzero().squeeze(-1)[:len(b.inside)]
            in_box[i, img] = (b.inside > 0.25).float()
        if query.any():   # one-turn dialogues have no box digit to guide
            per_layer = [-(torch.log((att[:, cfg.attn_head] * in_box[:, None, :]).sum(-1) + 1e-6))[query].mean()
                         for att in out.attentions]
            losses["attn"] = torch.stack(per_layer).mean()
    total = losses["text"] + sum(cfg.aux_weights.get(k, 1.0) * v for k, v in losses.items() if k != "text")
    return total, {k: float(v.detach()) for k, v in losses.items()}


def init_checkpoint(cfg: PretrainConfig, out_dir) -> Path:
    """The random-weight tiny model the run starts from (built once into `out_dir/init`)."""
    path = Path(out_dir) / "init"
    if not (path / "config.json").exists():
        build_tiny_checkpoint(path, cfg.min_pixels, cfg.max_pixels, cfg.seed, **cfg.tiny)
    return path


def pretrain(cfg: PretrainConfig, out_dir, resume: bool = True, progress: bool = True,
             evaluate: Optional[Callable] = None, eval_every: int = 200) -> dict:
    """Run (or resume) one pretraining run in `out_dir`; export the stock model to `out_dir/model`.

    `evaluate(model, processor) -> dict` (e.g. held-out grounding on fresh cases) runs every
    `eval_every` steps and at the end with the model in eval mode and the torch RNG untouched; its
    rows go to `out_dir/eval.jsonl`. Returns {model, history, evals}.
    """
    check_style(cfg.synth_style)   # before any model is built: a typo fails at once
    out_dir = Path(out_dir)
    vlm, processor = load_model_and_processor(init_checkpoint(cfg, out_dir), attn_implementation="eager",
                                              min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    if cfg.init_from:   # a second stage: the weights (and heads) of an earlier run, a new optimizer and schedule
        model = PretrainModel.from_pretrained(cfg.init_from)
        vlm = model.vlm
    else:
        model = PretrainModel(vlm)
    atomic_write_json(out_dir / "pretrain_config.json", asdict(cfg))
    opt = trainable_adamw(model, cfg.lr)   # every weight: the model is trained from scratch
    sched = cosine_schedule(opt, cfg.steps, cfg.warmup)
    eval_path = out_dir / "eval.jsonl"

    def step(indices: list[int]) -> dict:
        t0 = time.perf_counter()
        easy = sched.last_epoch < cfg.curriculum_steps      # the scheduler counts the steps taken (kept on resume)
        batch = [encode_case(*stream_case(cfg, i, easy), processor, cfg.crop_pixels, rationale=with_rationale(cfg, i),
                             single_turn=is_single_turn(cfg, i), crop_context=cfg.crop_context) for i in indices]
        loss, parts = pretrain_losses(model, batch, processor, cfg)
        opt.zero_grad()
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return dict(loss=float(loss.detach()), **parts, grad_norm=float(grad), lr=sched.get_last_lr()[0],
                    seconds=round(time.perf_counter() - t0, 3))

    def run_eval(row: dict) -> None:
        if evaluate is None or (row["step"] % eval_every and row["step"] != cfg.steps):
            return
        model.eval()
        with torch.no_grad(), torch.random.fork_rng():
            result = evaluate(vlm, processor)
        model.train()
        append_jsonl(eval_path, {"step": row["step"], **result})

    loop = LoopConfig(cfg.steps, cfg.batch_size, cfg.checkpoint_every, sampler_seed=cfg.seed,
                      torch_seed=cfg.seed, desc="pretrain")
    model.train()
    history = run_loop(model, opt, step, STREAM_SIZE, loop, out_dir, sched, resume=resume, show_progress=progress,
                       postfix=lambda r: dict(loss=f"{r['loss']:.3f}", text=f"{r['text']:.3f}"),
                       callbacks=[run_eval])
    model.eval()
    export = out_dir / "model"
    vlm.save_pretrained(export, safe_serialization=True)
    processor.save_pretrained(export)
    return dict(model=str(export), history=history, evals=read_evals(out_dir))


def read_evals(out_dir) -> list[dict]:
    """The held-out rows of a run, one per step (a resumed run's rerun of a step replaces the old row)."""
    path = Path(out_dir) / "eval.jsonl"
    rows = {r["step"]: r for r in read_jsonl(path)} if path.exists() else {}
    return [rows[k] for k in sorted(rows)]


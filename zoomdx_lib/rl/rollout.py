"""Multi-turn rollouts: turn 1 -> the crop tool -> turn 2, batched over B samples x G rollouts.

A policy is anything callable as `policy(inputs, turn, max_new_tokens, do_sample, temperature)`
returning the generated token ids of each row; `HFPolicy` wraps `model.generate`, `OraclePolicy`
writes the true box in turn 1 (the "oracle crop" row), and tests use `ScriptedPolicy`, which
"generates" chosen texts. Every turn of all B x G rows is one batched, left-padded, KV-cached
`generate` call (split into chunks of `rows_per_call`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from PIL import Image

from ..geometry import MIN_SIDE, model_box, model_input_size, processor_pixel_bounds
from ..io import progress as progress_bar
from ..model import chat
from .. import protocol as P
from ..protocol import Answer, ToolCall, extract_answer
from .rewards import trajectory_format
from .zoom import zoom


# (sample, original RGB image, the parsed valid call, its own crop) -> the image turn 2 sees
CropFn = Callable[[object, Image.Image, ToolCall, Image.Image], Image.Image]


@dataclass
class Trajectory:
    """One Zoom-then-Diagnose rollout.

    box: the parsed box in original-image pixels (None when the tool call was invalid).
    ended_early: True when turn 1 had no valid tool call, so no crop and no turn 2 happened.
    Token ids: prompt_ids (turn-1 prompt), turn1_ids and turn2_ids (generated: the policy tokens),
    crop_ids (end-of-turn fix-up, crop user turn and turn-2 header: not policy tokens).
    """

    sample_id: str
    index: int
    turn1_text: str
    tool: ToolCall
    turn2_text: Optional[str] = None
    crop: Optional[Image.Image] = None
    answer: Optional[Answer] = None
    prompt_ids: list = field(default_factory=list)
    turn1_ids: list = field(default_factory=list)
    crop_ids: list = field(default_factory=list)
    turn2_ids: list = field(default_factory=list)
    image_inputs: list = field(default_factory=list, repr=False)  # [(pixel_values, grid_thw)]: full image, crop

    @property
    def ended_early(self) -> bool:
        return not self.tool.ok

    @property
    def box(self):
        return self.tool.box_original if self.tool.ok else None

    @property
    def label(self) -> Optional[str]:
        """Parsed canonical answer, None when missing or invalid."""
        return self.answer.label if (self.answer is not None and self.answer.valid) else None

    @property
    def format_reward(self) -> float:
        """r_fmt of this rollout (both turns well formed)."""
        return trajectory_format(self)

    def sequence(self) -> tuple[list[int], list[int]]:
        """(all token ids, 1 on the model's own generated tokens) for the loss pass."""
        ids = self.prompt_ids + self.turn1_ids + self.crop_ids + self.turn2_ids
        mask = ([0] * len(self.prompt_ids) + [1] * len(self.turn1_ids) + [0] * len(self.crop_ids)
                + [1] * len(self.turn2_ids))
        return ids, mask


class HFPolicy:
    """`model.generate` as a policy: returns each row's new token ids up to and including end-of-turn."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.eos_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        tok = processor.tokenizer
        # The model must never write image placeholders itself: they would claim visual features
        # that do not exist when the trajectory is scored.
        self.suppress = sorted({tok.convert_tokens_to_ids(t) for t in
                                ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                                 "<|vision_pad|>", "<|im_start|>")} - {tok.unk_token_id, None})

    @torch.no_grad()
    def __call__(self, inputs: dict, turn: int, max_new_tokens: int, do_sample: bool, temperature: float):
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        # use_cache: a model set up for gradient checkpointing has config.use_cache False; generation
        # (eval mode, no graph) still wants its KV cache.
        kw = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=self.eos_id,
                  pad_token_id=self.processor.tokenizer.pad_token_id, suppress_tokens=self.suppress, use_cache=True)
        if do_sample:  # sample the plain tempered distribution, as GRPO's ratio assumes
            kw.update(temperature=temperature, top_k=0, top_p=1.0)
        else:
            kw.update(temperature=None, top_k=None, top_p=None)
        out = self.model.generate(**inputs, **kw)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        rows = []
        for r in new:
            rows.append(r[:r.index(self.eos_id) + 1] if self.eos_id in r else
                        [t for t in r if t != self.processor.tokenizer.pad_token_id])
        return rows


ORACLE_THINK = "Focus on the lesion."


def oracle_turn1(sample, image: Image.Image, processor) -> str:
    """Turn 1 that calls the tool at the sample's true box (model-input pixels of `image` as the processor sees it)."""
    lo, hi = processor_pixel_bounds(processor)
    msize = model_input_size(image.width, image.height, lo, hi)
    return P.turn(ORACLE_THINK, P.format_tool_call(model_box(sample.box, image.size, msize)))


class OraclePolicy:
    """Turn 1 is the given text of each row (the true-box tool call); turn 2 comes from the model."""

    def __init__(self, model, processor, turn1_texts: Sequence[str]):
        self.hf = HFPolicy(model, processor)
        self.processor, self.turn1, self._row = processor, list(turn1_texts), 0

    def __call__(self, inputs, turn, max_new_tokens, do_sample, temperature):
        if turn == 2:
            return self.hf(inputs, turn, max_new_tokens, do_sample, temperature)
        n = inputs["input_ids"].shape[0]
        texts = self.turn1[self._row:self._row + n]
        self._row += n
        end = self.processor.tokenizer.eos_token
        return [chat.tokenize(self.processor, t + end) for t in texts]


class ScriptedPolicy:
    """A policy that emits chosen texts: `texts[turn]` is a list (cycled over rows) or a callable(row)."""

    def __init__(self, processor, turn1: Sequence[str] | Callable, turn2: Sequence[str] | Callable):
        self.processor, self.texts = processor, {1: turn1, 2: turn2}
        self.calls: list[dict] = []

    def __call__(self, inputs, turn, max_new_tokens, do_sample, temperature):
        self.calls.append(dict(turn=turn, rows=inputs["input_ids"].shape[0], inputs=inputs))
        src = self.texts[turn]
        out = []
        for i in range(inputs["input_ids"].shape[0]):
            text = src(i) if callable(src) else src[i % len(src)]
            out.append(chat.tokenize(self.processor, text)[:max_new_tokens])
        return out


def rollout(items: Sequence[tuple], policy, processor, group_size: int = 1, do_sample: bool = False,
            temperature: float = 0.7, max_new_tokens: tuple[int, int] = (64, 64), crop_pixels: int = 112 * 112,
            min_side: float = MIN_SIDE, rows_per_call: int = 64, progress: bool = False,
            crop_fn: Optional[CropFn] = None, pad_frac: float = 0.0) -> list[list[Trajectory]]:
    """Run Zoom-then-Diagnose rollouts.

    items: (sample, PIL image) pairs; sample.question and sample.attribute are used.
    Returns trajectories as [len(items)][group_size]. Boxes come back in original-image pixels;
    the crop is taken from the original-resolution image at the parsed box. `crop_fn(sample, image,
    call, crop)`, when given, replaces the image returned to turn 2 after a valid call (the crop-use
    check: the true crop, a blank one, a crop elsewhere); the trajectory keeps its own box. `pad_frac`
    widens every box by that fraction of its width / height on each side before cropping (crop context:
    the surrounding tissue comes back too; the trajectory's box is then the widened one).
    Long because the two turns and the crop between them are one batched pipeline, read top to bottom.
    """
    tok = processor.tokenizer
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    lo, hi = processor_pixel_bounds(processor)
    images = [img.convert("RGB") for _, img in items]
    full = chat.encode_images(processor, images)
    suffix_text = chat.crop_turn_text(processor)

    rows, meta = [], []  # meta: (item index, group index)
    for i, (sample, _) in enumerate(items):
        text = chat.expand_image_tokens(chat.render_prompt(processor, sample.question), [full.grid_thw[i]], processor)
        ids = chat.tokenize(processor, text)
        for g in range(group_size):
            rows.append(ids)
            meta.append((i, g))

    def run(turn, row_ids, row_images):
        out = []
        for s in progress_bar(range(0, len(row_ids), rows_per_call), progress, desc=f"turn {turn}", leave=False):
            inputs = chat.model_inputs(row_ids[s:s + rows_per_call], row_images[s:s + rows_per_call], processor)
            out += policy(inputs, turn, max_new_tokens[turn - 1], do_sample, temperature)
        return out

    pairs = lambda idx: [(full.pixel_values[idx], full.grid_thw[idx])]  # noqa: E731
    gen1 = run(1, rows, [pairs(i) for i, _ in meta])

    trajs: list[list[Optional[Trajectory]]] = [[None] * group_size for _ in items]
    second = []  # (traj, row ids, images)
    crops_needed = []
    for (i, g), prompt_ids, new_ids in zip(meta, rows, gen1):
        sample, img = items[i][0], images[i]
        text1 = tok.decode([t for t in new_ids if t != eos_id], skip_special_tokens=False)
        msize = model_input_size(img.width, img.height, lo, hi)
        call, crop = zoom(text1, img, msize, crop_pixels, min_side=min_side, pad_frac=pad_frac, min_pixels=lo,
                          max_pixels=hi)
        if crop_fn is not None and call.ok:
            crop = crop_fn(sample, img, call, crop)
        t = Trajectory(sample_id=sample.id, index=g, turn1_text=text1, tool=call, crop=crop,
                       prompt_ids=list(prompt_ids), turn1_ids=list(new_ids), image_inputs=pairs(i))
        trajs[i][g] = t
        if call.ok:
            crops_needed.append((t, i))
    crop_enc = chat.encode_images(processor, [t.crop for t, _ in crops_needed])
    for k, (t, i) in enumerate(crops_needed):
        fixup = [] if (t.turn1_ids and t.turn1_ids[-1] == eos_id) else [eos_id]
        t.crop_ids = fixup + chat.tokenize(
            processor, chat.expand_image_tokens(suffix_text, [crop_enc.grid_thw[k]], processor))
        t.image_inputs = pairs(i) + [(crop_enc.pixel_values[k], crop_enc.grid_thw[k])]
        second.append((t, t.prompt_ids + t.turn1_ids + t.crop_ids, t.image_inputs))
    if second:
        gen2 = run(2, [r for _, r, _ in second], [im for _, _, im in second])
        for (t, _, _), new_ids in zip(second, gen2):
            t.turn2_ids = list(new_ids)
            t.turn2_text = tok.decode([x for x in new_ids if x != eos_id], skip_special_tokens=False)
    for i, (sample, _) in enumerate(items):
        for t in trajs[i]:
            t.answer = (extract_answer(t.turn2_text, sample.attribute) if t.turn2_text is not None
                        else Answer(label=None, valid=False, error="no_turn2", raw=None))
    return trajs


def single_turn_rollout(items: Sequence[tuple], policy, processor, group_size: int = 1, do_sample: bool = False,
                        temperature: float = 0.7, max_new_tokens: int = 64, rows_per_call: int = 64,
                        instruct: bool = False):
    """The no-zoom baseline: one assistant turn that answers directly. Returns [len(items)][group_size]
    trajectories whose tool is an 'absent' ToolCall and whose answer is parsed from the single turn.
    `instruct` appends :data:`~zoomdx_lib.protocol.ONE_TURN_INSTRUCTION` to each question (a base pretrained
    on both formats answers in one turn only when asked to; the single-turn SFT arm uses the plain question)."""
    tok = processor.tokenizer
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    images = [img.convert("RGB") for _, img in items]
    full = chat.encode_images(processor, images)
    rows, imgs, meta = [], [], []
    for i, (sample, _) in enumerate(items):
        question = P.one_turn_question(sample.question) if instruct else sample.question
        text = chat.expand_image_tokens(chat.render_prompt(processor, question), [full.grid_thw[i]], processor)
        ids = chat.tokenize(processor, text)
        for g in range(group_size):
            rows.append(ids)
            imgs.append([(full.pixel_values[i], full.grid_thw[i])])
            meta.append((i, g))
    gen = []
    for s in range(0, len(rows), rows_per_call):
        gen += policy(chat.model_inputs(rows[s:s + rows_per_call], imgs[s:s + rows_per_call], processor),
                      1, max_new_tokens, do_sample, temperature)
    out = [[None] * group_size for _ in items]
    for (i, g), prompt_ids, new_ids, row_images in zip(meta, rows, gen, imgs):
        sample = items[i][0]
        text = tok.decode([t for t in new_ids if t != eos_id], skip_special_tokens=False)
        t = Trajectory(sample_id=sample.id, index=g, turn1_text=text,
                       tool=ToolCall(ok=False, error="single_turn", box_model=None, box_original=None, raw=None),
                       prompt_ids=list(prompt_ids), turn1_ids=list(new_ids), image_inputs=row_images)
        t.answer = extract_answer(text, sample.attribute)
        out[i][g] = t
    return out

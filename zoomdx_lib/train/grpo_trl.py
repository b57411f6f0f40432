"""GRPO on Zoom-then-Diagnose rollouts through TRL's `GRPOTrainer` (``GRPOConfig.engine="trl"``).

Long because it is the whole TRL engine in one place: the tool-aware rendering, the crop tool as a TRL
environment, the reward functions, the advantage override, the trainer with its training loop, and the
record (below) of where TRL's rollout differs from the explicit one.

The same task as :mod:`zoomdx_lib.train.grpo` (the explicit step), expressed with TRL's pieces:

- the crop tool is the ``zoom`` method of :class:`ZoomEnvironment`, one instance per rollout, given to
  the trainer as ``environment_factory``. TRL calls ``reset(**row)`` with the whole dataset row
  (``prompt``, ``image``, ``sample``) before generating, and ``zoom(bbox_2d=[...])`` when turn 1 holds
  a tool call; the crop is cut by :func:`zoomdx_lib.rl.zoom.zoom` from the original image at the
  model-input size the processor uses, exactly as in the explicit rollout;
- the rewards are TRL reward functions (:class:`ZoomRewards`) over one shared scoring of the
  batch with :func:`zoomdx_lib.rl.rewards.score_group`: ``reward_loc`` (IoU), ``reward_acc``
  (accuracy on c = 1; ``None``, i.e. "not applicable", on c = 0), ``reward_fmt``, ``reward_group``
  (R_group, or its leave-one-out credit for the "credit" estimator), weighted by lambda_loc,
  lambda_acc, lambda_fmt, lambda_align, so the weighted sum TRL forms is the reward the estimator
  normalises;
- the advantages are the workbook's (:func:`zoomdx_lib.rl.advantages.compute_advantages`):
  :class:`ZoomGRPOTrainer` replaces the ``advantages`` TRL computed. TRL's own normalisation cannot
  stand in for them: its ``scale_rewards="batch"`` keeps the per-group mean as the baseline (so
  R_group still cancels; our "batch" estimator uses the batch mean), and its per-group std has
  Bessel's correction and eps 1e-4 (ours: population std, eps 1e-6, all-equal groups exactly 0);
- prompts: the trainer's shuffling ``RepeatSampler`` is replaced by the draws of
  :func:`zoomdx_lib.train.loop.run_loop` (P prompts a step, with replacement, one seeded generator),
  each repeated G times in a row, so both engines train on the same prompts step by step;
- the loss is TRL's ``loss_type="grpo"`` (clipped ratio at the sampling temperature, per-sequence
  token mean, mean over sequences, k3 KL when beta > 0) on the model's own tokens of both turns,
  the crop turn masked by TRL's tool mask; dropout is off as in the explicit step; LoRA is the
  workbook's (:func:`zoomdx_lib.model.load.lora_config`; a trainable adapter is continued as is);
  AdamW (no weight decay), constant learning rate, gradient norm clipped at 1.

Rendering under TRL, and where it differs from the paper (and from the explicit rollout)
-----------------------------------------------------------------------------------------
TRL builds the turn-2 input as ``prompt ids + turn-1 ids + suffix ids``, where the suffix is
rendered by the chat template from a ``{"role": "tool"}`` message holding the tool's return value.
The checkpoint's template does not render tool messages (neither the tiny one nor Qwen2.5-VL's own),
so :func:`tool_chat_template` extends it: a ``tool`` message is rendered as a **user** turn and
``zoom`` returns ``[{"type": "image", "image": crop}, {"type": "text", "text": "(Zoomed view)"}]``,
which makes the suffix byte-identical to the explicit crop turn (``<|im_end|>`` of turn 1, then
``<|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>(Zoomed view)<|im_end|>\\n
<|im_start|>assistant\\n``). Messages without tools render exactly as before; the tool schema that
TRL passes is not rendered (the question already states the call format, as in SFT). Tool calls
are parsed with a ``response_template`` (:data:`ZOOM_RESPONSE_TEMPLATE`) that reads the paper's
nameless ``<tool_call>{"bbox_2d": [...]}</tool_call>`` as a call of ``zoom``: no Qwen function-call
JSON is needed. What still differs from the explicit rollout:

1. a call that TRL parses but our parser rejects (zero area, outside the image, wrong length...)
   still gets a reply (a text tool turn, no image) and a second turn; the rewards treat it as the
   explicit loop does (no answer, r_fmt = 0), but its turn-2 tokens enter the loss with that
   rollout's advantage, where the explicit rollout ends after turn 1;
2. a Hermes-style ``{"name": "zoom", "arguments": {...}}`` call, which our parser unwraps, is not a
   tool call for TRL (no crop, no turn 2), nor is a turn whose first call is valid but a later one
   malformed (TRL's parser fails as a whole; ours reads the first call only); two valid calls in one
   turn get two tool turns (only the first crops; the second is answered with a text); a quoted box
   (``"bbox_2d": "[...]"``) is turned into a list by TRL's argument typing and cropped, while the
   rewards score it invalid, as ours does. In all of these the rewards are computed from the turn
   texts with our parser, exactly as in the explicit loop;
3. one ``max_new_tokens`` for both turns (the larger of ``rollout.max_new_tokens``), not one per
   turn; a turn 1 cut off by that limit gets no end-of-turn token before the crop turn (the explicit
   rollout inserts one, masked);
4. the KL reference (beta > 0 only) is TRL's frozen copy of the starting adapter (the SFT policy),
   not the base with the adapter disabled;
5. the log row's ``loss``, ``grad_norm`` and ``kl`` are TRL's; there is no ``ratio_max_dev`` (the
   ratio is 1 by construction at the first and only iteration); ``generated_tokens`` counts the
   turn 2 of case 1 above.

vLLM generation (``GRPOConfig.use_vllm``, CUDA only) is passed to TRL as its colocated mode with the
per-turn token cap; the CPU tests do not exercise it, and it does not suppress image tokens as HF
``generate`` does here. TRL 1.16 marks ``environment_factory`` experimental; its notice is silenced.

When the group term is right (and the credit estimator holds)
-------------------------------------------------------------
R_group and its leave-one-out credit need all G answers of a prompt in ONE reward call. TRL calls
the reward functions once per generation batch and process, on that process's completions. Its
sampler yields each prompt G times in a row and accelerate gives each process a contiguous slice of
``per_device_train_batch_size * steps_per_generation`` of them, so every group is whole when that
number is a multiple of G, i.e. when the P prompts of a step split evenly over the processes
(``prompts_per_step % num_processes == 0``; always true on one process). :func:`build_trainer`
checks this, and the reward functions refuse a batch whose consecutive G-blocks are not one prompt
each. The advantages are then computed over all processes' groups together (gathered), so "batch"
uses the whole step's baseline and scale, as in the explicit step.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer

from ..config import PAPER, GRPOConfig, PaperHyperParams, RolloutConfig
from ..geometry import model_input_size, processor_pixel_bounds
from ..io import progress as progress_bar
from ..model import chat
from ..model.build import QWEN25_VL_CHAT_TEMPLATE, TINY_CHAT_TEMPLATE
from ..model.load import lora_config
from ..protocol import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ZOOM_TEXT,
    Answer,
    extract_answer,
    parse_tool_call,
    single_turn_messages,
)
from ..rl.advantages import compute_advantages, credit_group_term
from ..rl.rewards import score_group
from ..rl.rollout import Trajectory
from ..rl.zoom import zoom
from .checkpoints import latest_checkpoint
from .common import CheckpointAndLog, FixedDraws, dropout_off, loop_draws, trainable_adamw
from .grpo import _log_row
from .loop import cut_log, processes, read_log, resume_latest

__all__ = ["ZOOM_RESPONSE_TEMPLATE", "ZoomEnvironment", "ZoomGRPOTrainer", "ZoomRewards", "build_trainer",
           "environment_factory", "prompt_dataset", "tool_chat_template", "tool_rendering", "train_grpo_trl"]

TOOL_NAME = "zoom"
MIN_SIDE = 28.0   # the rollout's box clean-up (model-input pixels), as in zoomdx_lib.rl.rollout.rollout

# ------------------------------------------------------------------------------------ rendering
# An assistant turn's tool calls: a zoom call in the paper's nameless form, any other call Hermes-style.
_TOOL_CALLS = (
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- if fn['name'] == '" + TOOL_NAME + "' and fn['arguments'] is mapping and fn['arguments'] | length == 1"
    " and 'bbox_2d' in fn['arguments'] -%}"
    "<tool_call>{\"bbox_2d\": {{ fn['arguments']['bbox_2d'] | tojson }}}</tool_call>"
    "{%- elif fn['arguments'] is string -%}"
    "<tool_call>{\"name\": {{ fn['name'] | tojson }}, \"arguments\": {{ fn['arguments'] }}}</tool_call>"
    "{%- else -%}"
    "<tool_call>{\"name\": {{ fn['name'] | tojson }}, \"arguments\": {{ fn['arguments'] | tojson }}}</tool_call>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
)
_ROLE = "<|im_start|>{{ message['role'] }}"
_TOOL_AS_USER = "<|im_start|>{{ 'user' if message['role'] == 'tool' else message['role'] }}"
# Where each known template closes a message (before <|im_end|>), with how often that happens in it.
_TURN_ENDS = {
    TINY_CHAT_TEMPLATE: [("{%- endif -%}<|im_end|>", 1)],
    QWEN25_VL_CHAT_TEMPLATE: [("{{ message['content'] }}<|im_end|>", 1), ("{% endfor %}<|im_end|>", 1)],
}


def tool_chat_template(template: str) -> str:
    """`template` (the tiny model's or Qwen2.5-VL's own) extended for TRL's tool loop.

    A ``tool`` message is rendered as a user turn (so the crop turn is the paper's user image turn)
    and an assistant message's ``tool_calls`` after its content, a zoom call as
    ``<tool_call>{"bbox_2d": [...]}</tool_call>``. Conversations without tools render as before.
    Raises ValueError for any other template.
    """
    if template not in _TURN_ENDS or template.count(_ROLE) != 1:
        raise ValueError("the TRL GRPO engine knows the tiny model's and Qwen2.5-VL's own chat templates; this "
                         "checkpoint carries another one (extend zoomdx_lib.train.grpo_trl.tool_chat_template)")
    out = template.replace(_ROLE, _TOOL_AS_USER)
    for anchor, count in _TURN_ENDS[template]:
        if out.count(anchor) != count:
            raise ValueError(f"chat template anchor {anchor!r} found {out.count(anchor)} times, expected {count}")
        out = out.replace(anchor, anchor.replace("<|im_end|>", _TOOL_CALLS + "<|im_end|>"))
    return out


# How TRL reads a generated turn: each <tool_call>{json}</tool_call> block becomes a call of `zoom` with the
# JSON's bbox_2d (the paper's call has no function name); everything else is the content. A block that is not
# JSON, or has no bbox_2d, makes TRL's parser fail as a whole: the turn then holds no call at all.
ZOOM_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": TOOL_CALL_OPEN,
            "close": TOOL_CALL_CLOSE,
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": {"name": TOOL_NAME,
                                                            "arguments": {"bbox_2d": "{content.bbox_2d}"}}},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text", "repeats": True, "join": ""},
    },
}


@contextlib.contextmanager
def tool_rendering(processor):
    """Inside the block the processor renders tool turns (:func:`tool_chat_template`) and its tokenizer
    parses zoom calls (:data:`ZOOM_RESPONSE_TEMPLATE`); both are restored afterwards."""
    tok = processor.tokenizer
    saved = processor.chat_template, getattr(tok, "response_template", None)
    try:
        processor.chat_template = tool_chat_template(saved[0])
        tok.response_template = ZOOM_RESPONSE_TEMPLATE
        yield processor
    finally:
        processor.chat_template = saved[0]
        tok.response_template = saved[1]


# ------------------------------------------------------------------------------------ the environment
class ZoomEnvironment:
    """One rollout's crop tool. TRL makes one per rollout, calls :meth:`reset` with the dataset row and
    :meth:`zoom` when turn 1 holds a tool call. Only the first call of a rollout can crop."""

    def __init__(self, pixel_bounds: tuple[int, int], crop_pixels: int, min_side: float = MIN_SIDE):
        self._bounds, self._crop_pixels, self._min_side = tuple(pixel_bounds), crop_pixels, min_side
        self.image: Image.Image | None = None
        self.sample = None
        self.calls: list = []          # ToolCall of every call this rollout made
        self.crop: Image.Image | None = None
        self.policy_mask: list[int] | None = None   # 1 on the model's own completion tokens (set by the trainer)

    def reset(self, image=None, sample=None, **row) -> None:
        """Start a rollout on a dataset row (TRL passes every column: ``prompt``, ``image``, ``sample``).
        Returns None: nothing is added to the prompt."""
        if image is None:
            raise ValueError(f"the dataset row has no 'image' (columns: {sorted(['sample', *row])})")
        self.image, self.sample = image.convert("RGB"), sample
        self.calls, self.crop, self.policy_mask = [], None, None

    @property
    def model_size(self) -> tuple[int, int]:
        """(width, height) of the image as the processor feeds it to the model."""
        return model_input_size(self.image.width, self.image.height, *self._bounds)

    def zoom(self, bbox_2d: list[int]) -> list[dict]:
        """Look closer: crop the lesion region of the ultrasound image and show it at a higher resolution.

        Args:
            bbox_2d: The region as [x1, y1, x2, y2] in pixels of the image as you see it.

        Returns:
            The zoomed view as an image, followed by its caption.
        """
        if self.calls:
            return [{"type": "text", "text": "Only one zoom per case."}]
        text = TOOL_CALL_OPEN + json.dumps({"bbox_2d": bbox_2d}) + TOOL_CALL_CLOSE
        lo, hi = self._bounds
        call, crop = zoom(text, self.image, self.model_size, self._crop_pixels, min_side=self._min_side,
                          min_pixels=lo, max_pixels=hi)
        self.calls.append(call)
        if not call.ok:
            return [{"type": "text", "text": f"No zoom: {call.error}."}]
        self.crop = crop
        return [{"type": "image", "image": crop}, {"type": "text", "text": ZOOM_TEXT}]


def environment_factory(processor, crop_pixels: int) -> Callable[[], ZoomEnvironment]:
    """The ``environment_factory``: environments for `processor`'s pixel bounds and crops of `crop_pixels`."""
    bounds = processor_pixel_bounds(processor)
    return lambda: ZoomEnvironment(bounds, crop_pixels)


def prompt_dataset(items: Sequence[tuple]) -> datasets.Dataset:
    """A `datasets.Dataset` over (sample, image) items whose rows are read lazily (a transform):
    ``prompt`` (the user turn: image + question, as the explicit rollout renders it), ``image``
    (RGB original) and ``sample`` (the :class:`~zoomdx_lib.schema.Sample`)."""
    items = list(items)

    def rows(batch):
        got = [items[i] for i in batch["row"]]
        return {"prompt": [single_turn_messages(s.question) for s, _ in got],
                "image": [img.convert("RGB") for _, img in got], "sample": [s for s, _ in got]}
    return datasets.Dataset.from_dict({"row": list(range(len(items)))}).with_transform(rows)


# ------------------------------------------------------------------------------------ rewards
def trajectory_from_completion(ids: Sequence[int], env: ZoomEnvironment, tokenizer, index: int = 0) -> Trajectory:
    """The explicit rollout's :class:`Trajectory` of one TRL completion: turn 1 and turn 2 are the two runs
    of the policy mask, the tool call is parsed from the turn-1 text by our parser, and the answer is
    read only when that call was valid (as in the explicit rollout, where an invalid call ends it)."""
    if env.policy_mask is None:
        raise RuntimeError("the completion's policy mask is missing: score TRL completions with ZoomGRPOTrainer")
    ids, mask = list(ids), list(env.policy_mask)
    runs, k = [], 0
    while k < len(ids):
        if mask[k]:
            j = k
            while j < len(ids) and mask[j]:
                j += 1
            runs.append((k, j))
            k = j
        else:
            k += 1
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def decode(part):
        return tokenizer.decode([t for t in part if t != eos], skip_special_tokens=False)

    s1, e1 = runs[0] if runs else (0, 0)
    turn1 = ids[s1:e1]
    text1 = decode(turn1)
    call = parse_tool_call(text1, env.model_size, env.image.size, min_side=MIN_SIDE)
    t = Trajectory(sample_id=env.sample.id, index=index, turn1_text=text1, tool=call, crop=env.crop,
                   turn1_ids=turn1)
    if len(runs) > 1:
        s2, e2 = runs[1]
        t.crop_ids, t.turn2_ids = ids[e1:s2], ids[s2:e2]
        if call.ok:
            t.turn2_text = decode(t.turn2_ids)
    t.answer = (extract_answer(t.turn2_text, env.sample.attribute) if t.turn2_text is not None
                else Answer(label=None, valid=False, error="no_turn2", raw=None))
    return t


@dataclass
class ScoredBatch:
    """One reward call's completions as explicit trajectories, grouped [n_groups][G], with each group's
    sample and :func:`score_group` result."""

    trajs: list
    samples: list
    scores: list


class ZoomRewards:
    """TRL reward functions ``(prompts, completions, **kwargs) -> list[float]`` over one scoring of the batch.

    :meth:`functions` returns reward_loc, reward_acc, reward_fmt, reward_group and :meth:`weights` their
    lambdas; TRL's weighted sum is then the reward the estimator normalises: Eq. 3 ("group", "batch"),
    individual + lambda_align * leave-one-out credit ("credit"), or the accuracy-only ablation. The
    functions need the ``environments`` TRL passes (the crop tool's state and the policy mask) and the
    ``completion_ids``; the batch is scored once (the first function call) and kept in :attr:`last`.
    """

    def __init__(self, tokenizer, variant: str = "uncertainty", estimator: str = "credit",
                 hp: PaperHyperParams = PAPER):
        self.tokenizer, self.variant, self.estimator, self.hp = tokenizer, variant, estimator, hp
        self.last: ScoredBatch | None = None
        self._last_key = None

    def score(self, completion_ids, environments) -> ScoredBatch:
        if self._last_key is completion_ids and self.last is not None:
            return self.last
        G = self.hp.group_size
        if len(completion_ids) % G:
            raise ValueError(f"{len(completion_ids)} completions are not whole groups of G={G}")
        trajs, samples, scores = [], [], []
        for k in range(0, len(completion_ids), G):
            envs = environments[k:k + G]
            if len({id(e.sample) for e in envs}) != 1:
                raise ValueError(f"completions {k}..{k + G - 1} are not the G rollouts of one prompt: the group "
                                 "term needs whole groups in one reward call (see the grpo_trl module docstring)")
            group = [trajectory_from_completion(completion_ids[k + g], envs[g], self.tokenizer, g) for g in range(G)]
            trajs.append(group)
            samples.append(envs[0].sample)
            scores.append(score_group(group, envs[0].sample, self.variant, self.hp))
        self.last, self._last_key = ScoredBatch(trajs, samples, scores), completion_ids
        return self.last

    def _column(self, completion_ids, environments, column: Callable[[dict, object], list]) -> list:
        batch = self.score(completion_ids, environments)
        return [v for s, sample in zip(batch.scores, batch.samples) for v in column(s, sample)]

    def functions(self) -> list[Callable]:
        def reward_loc(prompts, completions, completion_ids, environments, **kwargs) -> list[float]:
            return self._column(completion_ids, environments, lambda s, _: s["loc"].tolist())

        def reward_acc(prompts, completions, completion_ids, environments, **kwargs) -> list:
            gated = self.variant == "uncertainty"   # accuracy counts on consensus cases only
            return self._column(completion_ids, environments,
                                lambda s, sample: [None if gated and sample.c == 0 else v for v in s["acc"].tolist()])

        def reward_fmt(prompts, completions, completion_ids, environments, **kwargs) -> list[float]:
            return self._column(completion_ids, environments, lambda s, _: s["fmt"].tolist())

        def reward_group(prompts, completions, completion_ids, environments, **kwargs) -> list[float]:
            def column(s, sample):
                if self.estimator == "credit":
                    return credit_group_term(s["answers"], sample.c, sample.label, self.hp.delta).tolist()
                return [float(s["group_term"])] * len(s["answers"])
            return self._column(completion_ids, environments, column)

        return [reward_loc, reward_acc, reward_fmt, reward_group]

    def weights(self) -> list[float]:
        hp = self.hp
        return [hp.lambda_loc, hp.lambda_acc, hp.lambda_fmt, hp.lambda_align]

    @staticmethod
    def group_records(batch: ScoredBatch) -> list[tuple]:
        """What the advantages need of each group: (individual rewards, R_group, answers, c, label)."""
        return [(s["individual"], s["group_term"], s["answers"], smp.c, smp.label)
                for s, smp in zip(batch.scores, batch.samples)]

    def advantages(self, records: Sequence[tuple]) -> np.ndarray:
        """The estimator's advantages [n_groups, G] of :meth:`group_records` (the explicit step's formula)."""
        ind, group, answers, cs, ys = zip(*records)
        return compute_advantages(np.stack(ind), list(group), list(answers), list(cs), list(ys), self.estimator,
                                  self.hp)


def step_row(batch: ScoredBatch, advantages: np.ndarray, time_generation_s: float) -> dict:
    """The explicit step's log row (:func:`zoomdx_lib.train.grpo._log_row` itself) of a scored batch;
    ``loss``, ``grad_norm``, ``kl`` and ``time_update_s`` are filled in once the update is done."""
    items = [(sample, None) for sample in batch.samples]
    return _log_row(batch.trajs, items, batch.scores, advantages, 0.0, [], 0.0, time_generation_s, 0.0)


# ------------------------------------------------------------------------------------ the trainer
class ZoomGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the workbook's advantages, the loop's prompt draws and a log row per step.

    Three overrides, nothing else: ``_get_train_sampler`` (the draws), ``_generate`` (hands each
    rollout's policy mask to its environment and times generation), ``_generate_and_score_completions``
    (replaces TRL's advantages by the estimator's and prepares the step's log row).
    """

    def __init__(self, *args, zoom_rewards: ZoomRewards, draws: Sequence[Sequence[int]] | None = None, **kwargs):
        self.zoom_rewards, self._draws = zoom_rewards, draws
        self.zoom_row: dict | None = None
        self.last_advantages: np.ndarray | None = None
        self._time_generation = 0.0
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset=None):
        if self._draws is None:
            return super()._get_train_sampler(dataset)
        return FixedDraws.grouped(self._draws, self.num_generations,
                                  self.num_iterations * self.args.steps_per_generation)

    def _generate(self, prompts: list):
        t0 = time.perf_counter()
        out = super()._generate(prompts)
        self._time_generation = time.perf_counter() - t0
        completion_ids, tool_mask = out[1], out[2]
        for k, (env, ids) in enumerate(zip(self.environments, completion_ids)):
            env.policy_mask = list(tool_mask[k]) if tool_mask is not None else [1] * len(ids)
        return out

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        batch = self.zoom_rewards.last
        if batch is None or sum(len(g) for g in batch.trajs) != len(inputs):
            raise RuntimeError("the zoom rewards did not score this batch")
        records = self.zoom_rewards.group_records(batch)
        if self.accelerator.num_processes > 1:   # every process's groups, in process order
            from accelerate.utils import gather_object
            records = gather_object(records)
        adv = self.zoom_rewards.advantages(records)
        n, k = len(batch.trajs), self.accelerator.process_index
        local = adv[k * n:(k + 1) * n]
        output["advantages"] = torch.tensor(local.reshape(-1), dtype=output["advantages"].dtype,
                                            device=output["advantages"].device)
        self.zoom_row = step_row(batch, local, self._time_generation)
        self.last_advantages = local
        return output


def crop_tokens_bound(processor) -> int:
    """Upper bound on the tokens of one crop turn (its text and at most max_pixels / 28^2 image tokens)."""
    _, hi = processor_pixel_bounds(processor)
    return len(chat.tokenize(processor, chat.crop_turn_text(processor))) + math.ceil(hi / (28 * 28))


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, max(1, cap)) + 1) if n % d == 0)


def build_trainer(model, processor, items: Sequence[tuple], cfg: GRPOConfig, out_dir, variant: str = "uncertainty",
                  rollout_cfg: RolloutConfig | None = None, hp: PaperHyperParams = PAPER, seed: int = 0,
                  steps: int | None = None, draws: Sequence[Sequence[int]] | None = None, optimizer=None,
                  scheduler=None, device: str = "cpu", use_vllm: bool | None = None,
                  callbacks: Sequence[TrainerCallback] = ()) -> ZoomGRPOTrainer:
    """A :class:`ZoomGRPOTrainer` for `cfg` (P prompts x G rollouts a step, `cfg.steps` or `steps` steps).

    Call it inside :func:`tool_rendering`. A model that is not a peft model gets the paper's LoRA
    (``hp.lora_*``); a peft model's trainable adapter is trained as is. One optimizer step per GRPO
    step: the P*G completions are generated at once and backpropagated ``cfg.micro_batch`` (rounded
    down to a divisor of P*G) at a time. `draws` (default: the loop's draws for `seed`) are each step's
    prompt indices into `items`; `optimizer` defaults to AdamW(lr=cfg.lr, no weight decay) over the
    trainable parameters, `scheduler` to a constant learning rate. Generation is HF ``generate``;
    vLLM (colocated) only when `use_vllm` (default ``cfg.use_vllm``) and CUDA is available.
    """
    from peft import PeftModel, get_peft_model
    rollout_cfg = rollout_cfg or RolloutConfig()
    if not isinstance(model, PeftModel):
        model = get_peft_model(model, lora_config(hp.lora_rank, hp.lora_alpha, hp.lora_dropout))
    G, P = hp.group_size, cfg.prompts_per_step
    steps = cfg.steps if steps is None else steps
    n_proc = processes(device).num_processes
    if P % n_proc:
        raise ValueError(f"prompts_per_step={P} does not split over {n_proc} processes: the group term needs all "
                         f"G={G} rollouts of a prompt on one process")
    per_proc = P * G // n_proc
    micro = _largest_divisor(per_proc, cfg.micro_batch)
    on_gpu = str(device).startswith("cuda")
    use_vllm = (cfg.use_vllm if use_vllm is None else use_vllm) and on_gpu and torch.cuda.is_available()
    tok = processor.tokenizer
    per_turn = max(rollout_cfg.max_new_tokens)
    suppress = sorted({tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                       "<|vision_end|>", "<|vision_pad|>", "<|im_start|>")} - {tok.unk_token_id, None})
    gen_kwargs = {"max_tokens": per_turn} if use_vllm else {"max_new_tokens": per_turn, "suppress_tokens": suppress}
    gc = bool(getattr(model, "is_activation_checkpointing", False))
    rewards = ZoomRewards(tok, variant, cfg.estimator, hp)
    args = TRLGRPOConfig(
        output_dir=str(Path(out_dir) / "trainer"), max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_proc // micro, num_generations=G, num_iterations=1, learning_rate=cfg.lr,
        weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=cfg.beta,
        epsilon=hp.clip_epsilon, loss_type="grpo", scale_rewards="group", temperature=hp.temperature, top_p=1.0,
        top_k=0, max_completion_length=2 * per_turn + crop_tokens_bound(processor), max_tool_calling_iterations=1,
        generation_kwargs=gen_kwargs, disable_dropout=True, reward_weights=rewards.weights(), shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to=[], seed=seed, bf16=on_gpu, use_cpu=not on_gpu,
        dataloader_pin_memory=on_gpu, disable_tqdm=True, remove_unused_columns=False, log_completions=False,
        activation_checkpointing=gc, activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        use_vllm=use_vllm, vllm_mode="colocate")
    if optimizer is None:
        optimizer = trainable_adamw(model, cfg.lr)
    if scheduler is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if draws is None:
        flat = loop_draws(len(items), P, steps, seed)
        draws = [flat[k * P:(k + 1) * P] for k in range(steps)]
    if len(draws) != steps or any(len(d) != P for d in draws):
        raise ValueError(f"draws must hold {steps} steps of {P} prompt indices")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using 'environment_factory'", category=UserWarning)
        trainer = ZoomGRPOTrainer(model=model, reward_funcs=rewards.functions(), args=args,
                                  train_dataset=prompt_dataset(items), processing_class=processor,
                                  environment_factory=environment_factory(processor, rollout_cfg.crop_pixels),
                                  optimizers=(optimizer, scheduler), callbacks=list(callbacks),
                                  zoom_rewards=rewards, draws=draws)
    trainer.remove_callback(PrinterCallback)
    return trainer


# ------------------------------------------------------------------------------------ training
def _postfix(row: dict) -> dict:
    return dict(R=f"{row['reward_total']:.2f}", iou=f"{row['mean_iou']:.2f}")


class _GRPOLog(CheckpointAndLog):
    """The explicit step's log row of each step: the trainer's scored batch, TRL's loss, grad norm and KL."""

    trainer: ZoomGRPOTrainer | None = None

    def log_row(self, logs: dict, lr_scheduler) -> dict | None:
        if self.trainer.zoom_row is None:
            return None
        row = dict(self.trainer.zoom_row)
        self.trainer.zoom_row = None
        row.update(loss=float(logs["loss"]), grad_norm=float(logs.get("grad_norm") or 0.0),
                   kl=float(logs.get("kl") or 0.0),
                   time_update_s=max(0.0, time.perf_counter() - self.t0 - row["time_generation_s"]))
        return row


def train_grpo_trl(model, processor, train_items: Sequence[tuple], cfg: GRPOConfig, out_dir,
                   variant: str = "uncertainty", rollout_cfg: RolloutConfig | None = None,
                   hp: PaperHyperParams = PAPER, seed: int = 0, resume: bool = True, progress: bool = True,
                   callbacks: Sequence[Callable] = (), device: str = "cpu") -> list[dict]:
    """:func:`zoomdx_lib.train.grpo.train_grpo` through TRL: same contract, log keys and checkpoints.

    `model` is a peft model with a trainable adapter (the SFT LoRA). Checkpoints (adapter, optimizer,
    scheduler, RNG) every ``cfg.checkpoint_every`` steps into `out_dir`, with `resume` the run continues
    from the latest one; the same prompts as the explicit loop for the same `seed`. Returns the log rows.
    The trainer is built before a checkpoint is loaded, so with beta > 0 TRL's reference copy of the
    adapter is the starting (SFT) adapter on a resumed run too; the copy is removed after training.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = trainable_adamw(model, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ckpt = latest_checkpoint(out_dir) if resume else None
    start = json.loads((ckpt / "trainer_state.json").read_text())["step"] if ckpt is not None else 0
    procs = processes(device)
    if procs.is_main_process:
        cut_log(out_dir, start)
    procs.wait_for_everyone()
    rows = read_log(out_dir)
    progress = progress and procs.is_main_process
    if start >= cfg.steps:
        resume_latest(out_dir, model, opt, sched)   # the finished run's adapter, for the caller to save
        return rows
    P = cfg.prompts_per_step
    flat = loop_draws(len(train_items), P, cfg.steps, seed)
    draws = [flat[k * P:(k + 1) * P] for k in range(start, cfg.steps)]
    bar = progress_bar(range(start, cfg.steps), progress, desc=f"GRPO {variant}/{cfg.estimator} (TRL)",
                       initial=start, total=cfg.steps)
    try:
        with tool_rendering(processor), dropout_off(model):   # and back after TRL's disable_dropout zeroed them
            logger = _GRPOLog(out_dir, start, cfg.steps, cfg.checkpoint_every, None, callbacks,
                              bar if progress else None, postfix=_postfix)
            trainer = build_trainer(model, processor, train_items, cfg, out_dir, variant, rollout_cfg, hp, seed,
                                    steps=cfg.steps - start, draws=draws, optimizer=opt, scheduler=sched,
                                    device=device, callbacks=[logger])
            logger.trainer = trainer
            if start:   # weights, optimizer, scheduler and RNG of the checkpoint; the RNG again at the first step
                resume_latest(out_dir, model, opt, sched)
                logger.rng_state = torch.get_rng_state()
            model.train()
            trainer.train()
    finally:
        if "ref" in getattr(model, "peft_config", {}):   # TRL's KL reference copy (beta > 0)
            model.delete_adapter("ref")
        model.eval()
        if progress:
            bar.close()
    procs.wait_for_everyone()
    return read_log(out_dir)

"""The paper's hyper-parameters and the three run profiles: one place decides sizes and steps.

`get_profile("smoke" | "cpu" | "paper", **overrides)` returns a `Profile`; notebooks take
the profile name as a papermill parameter and read everything else from here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class PaperHyperParams:
    """Section 2.3 of the paper: rollouts, temperature, threshold and reward weights."""

    group_size: int = 8            # G rollouts per prompt
    temperature: float = 0.7       # sampling temperature for GRPO and for the 8 evaluation rollouts
    delta: float = 0.75            # confidence threshold on kappa
    lambda_loc: float = 0.1
    lambda_acc: float = 0.3        # applied only when c = 1
    lambda_fmt: float = 0.1
    lambda_align: float = 0.5
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    clip_epsilon: float = 0.2      # PPO-style ratio clip of the GRPO loss


PAPER = PaperHyperParams()


@dataclass
class Profile:
    """Everything a run needs to know about its size. Pixel sizes are in model-input pixels.

    model_path None means "build the offline tiny Qwen2.5-VL into the run folder".
    """

    name: str
    seed: int = 0
    model_path: Optional[str] = None
    # data
    image_size: int = 256                  # synthetic original images are square, this many pixels
    organs_train: tuple[str, ...] = ("liver", "breast")
    organ_test_cross: str = "thyroid"
    n_train_per_organ: int = 600
    n_test_per_organ: int = 120            # the paper's 120 cases per test set
    attributes: tuple[str, ...] = ("echo", "shape", "margin")
    real_data_dirs: tuple[str, ...] = ()   # importer roots evaluated as extra test splits
    n_real_test: int = 120
    # processor pixel bounds (full image) and the target area of a crop
    min_pixels: int = 112 * 112
    max_pixels: int = 224 * 224
    crop_pixels: int = 112 * 112
    # SFT: an optional from-scratch stage (tiny model only), then LoRA as in the paper
    sft_warmup_steps: int = 0             # tiny model only: short look-and-answer steps before the dialogues
    sft_full_steps: int = 600
    sft_lora_steps: int = 150
    sft_batch_size: int = 16
    sft_lr_full: float = 2e-3
    sft_lr_lora: float = 5e-4
    single_turn_steps: Optional[int] = None  # None = same budget as the zoom model
    checkpoint_every: int = 100
    # GRPO
    grpo_steps: int = 40
    grpo_prompts_per_step: int = 2
    grpo_lr: float = 1e-4
    grpo_beta: float = 0.0                 # KL weight to the SFT policy
    grpo_estimator: str = "credit"         # "group" (paper as written), "batch", "credit"
    grpo_paper_group_row: bool = True      # also train (and evaluate) the paper-literal "group" estimator
    # generation
    max_new_tokens_turn1: int = 64
    max_new_tokens_turn2: int = 64
    eval_rollouts: int = 8
    eval_batch_size: int = 16
    bootstrap_samples: int = 1000
    # tiny model size (ignored when model_path is a real checkpoint)
    tiny: dict = field(default_factory=lambda: dict(
        text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=2, text_intermediate=768,
        vision_hidden=128, vision_depth=4, vision_heads=4, vision_intermediate=384))
    device: str = "cpu"
    hp: PaperHyperParams = PAPER

    @property
    def G(self) -> int:
        return self.hp.group_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", n_train_per_organ=48, n_test_per_organ=12, n_real_test=8,
        sft_warmup_steps=10, sft_full_steps=30, sft_lora_steps=10, sft_batch_size=8, checkpoint_every=10,
        grpo_steps=2, grpo_prompts_per_step=1, eval_rollouts=8, eval_batch_size=16,
        max_new_tokens_turn1=64, max_new_tokens_turn2=48, bootstrap_samples=200,
        tiny=dict(text_hidden=64, text_layers=2, text_heads=2, text_kv_heads=1, text_intermediate=128,
                  vision_hidden=64, vision_depth=2, vision_heads=2, vision_intermediate=128)),
    # Sized for a ~20-minute chain on 2 cores: test sets of 40 cases (the paper: 120) because 8-rollout
    # evaluation dominates; SFT batch 8 (the two-turn format needs ~300 updates, not more examples);
    # the paper-literal `group` GRPO row is left to smoke/paper (its update provably ignores R_group).
    "cpu": Profile(name="cpu", n_test_per_organ=40, n_real_test=40, sft_full_steps=300, sft_lora_steps=60,
                   sft_batch_size=8, grpo_steps=10, checkpoint_every=50, grpo_paper_group_row=False),
    "paper": Profile(
        name="paper", model_path="Qwen/Qwen2.5-VL-7B-Instruct", image_size=448,
        n_train_per_organ=4000, min_pixels=56 * 56, max_pixels=28 * 28 * 1280, crop_pixels=28 * 28 * 256,
        sft_full_steps=0, sft_lora_steps=2000, sft_batch_size=16, sft_lr_lora=1e-4,
        grpo_steps=500, grpo_prompts_per_step=8, grpo_lr=1e-6, grpo_beta=0.0,
        max_new_tokens_turn1=256, max_new_tokens_turn2=256, eval_batch_size=32, device="cuda"),
}


def get_profile(name: str, **overrides) -> Profile:
    """Return a copy of the named profile with fields replaced by `overrides`.

    Raises ValueError naming the unknown profile or field.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    known = {f.name for f in dataclasses.fields(Profile)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown profile field(s) {bad}")
    return dataclasses.replace(PROFILES[name], **overrides)

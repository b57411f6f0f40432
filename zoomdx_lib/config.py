"""The paper's hyper-parameters, one config object per stage, and the profiles that compose them.

Long because it is every stage's configuration in one place, the bottom layer every room reads.

`get_profile("smoke" | "cpu" | "paper", **overrides)` returns a `Profile`; notebooks take the
profile name as a papermill parameter and read everything else from here. A profile is a name
and a seed over one config per stage::

    Profile.model    which checkpoint, its pixel bounds, the tiny model's size
    Profile.data     synthetic split sizes and image size
    Profile.rollout  how a Zoom-then-Diagnose rollout is generated (tokens per turn, crop size)
    Profile.sft      the SFT stages (warm-up, from-scratch, LoRA)
    Profile.grpo     GRPO (steps, prompts per step, learning rate, estimator, KL)
    Profile.eval     evaluation rollouts, batch size, bootstrap
    Profile.hp       the paper's hyper-parameters (G, T, delta, lambdas, LoRA)

`PretrainConfig` (not part of a profile) is one pretraining run of the shipped tiny base (`make base`,
notebook 00); `TINY_SIZES` are the tiny model's sizes, which it and `ModelConfig` share.

Overrides name a field of a stage as ``stage__field`` (``get_profile("cpu", grpo__steps=20)``),
or replace top-level fields (``seed``, ``device``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BASE = Path(__file__).resolve().parent / "base"   # the pretrained tiny base (`make base`, notebook 00)
BUS_BRA_TEST_FOLD = 3      # the BUS-BRA fold every evaluation uses: never trained or selected on
DATA_ENV = "ZOOMDX_DATA"   # where real data sets live; default: the repository's git-ignored data/ folder


def data_root() -> Path:
    """The folder that holds real data sets (``bus_bra/``, ``busi/`` ...): ``$ZOOMDX_DATA`` when set,
    else ``data/`` in the repository (git-ignored; the README says how to fill it)."""
    return Path(os.environ.get(DATA_ENV) or REPO_ROOT / "data").expanduser()


def data_path(path) -> Path:
    """A real-data folder or file: absolute paths as they are, relative ones under :func:`data_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_root() / p


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


# The offline tiny Qwen2.5-VL: widths, depths and heads of its language model and vision tower.
TINY_SIZES = dict(text_hidden=256, text_layers=4, text_heads=4, text_kv_heads=2, text_intermediate=768,
                  vision_hidden=128, vision_depth=4, vision_heads=4, vision_intermediate=384)


@dataclass
class ModelConfig:
    """The checkpoint and its processor bounds (pixels of the model-input image).

    path None means "build the offline tiny Qwen2.5-VL into the run folder" with `tiny` sizes;
    otherwise a complete local checkpoint folder. gradient_checkpointing trades compute for
    activation memory while training.
    """

    path: Optional[str] = None
    min_pixels: int = 112 * 112
    max_pixels: int = 224 * 224
    gradient_checkpointing: bool = False
    tiny: dict = field(default_factory=lambda: dict(TINY_SIZES))

    @property
    def pixel_bounds(self) -> dict:
        """The processor's pixel bounds as keyword arguments: every stage loads with the same ones."""
        return dict(min_pixels=self.min_pixels, max_pixels=self.max_pixels)


@dataclass
class DataConfig:
    """Synthetic splits: square images of `image_size` pixels; real test splits capped at `n_real_test`."""

    image_size: int = 256
    organs_train: tuple[str, ...] = ("liver", "breast")
    organ_test_cross: str = "thyroid"
    n_train_per_organ: int = 600
    n_test_per_organ: int = 120            # the paper's 120 cases per test set
    attributes: tuple[str, ...] = ("echo", "shape", "margin")
    n_real_test: int = 120
    readability_cases: tuple[int, int] = (240, 160)   # (train, test) cases per attribute, notebook 01's check
    # notebook 01's high-resolution check: (original side in pixels, generator detail_scale); the margin is
    # drawn at native scale there (zoomdx_lib.data.synth.generate_case)
    readability_native: tuple[int, float] = (1024, 1.0)


@dataclass
class RolloutConfig:
    """One Zoom-then-Diagnose rollout: new tokens per turn and the crop's area in pixels."""

    max_new_tokens: tuple[int, int] = (64, 64)
    crop_pixels: int = 112 * 112


@dataclass
class SFTConfig:
    """SFT: an optional from-scratch stage (tiny model only; an optional vision warm-up first), then LoRA."""

    warmup_steps: int = 0              # tiny model only: short look-and-answer steps before the dialogues
    full_steps: int = 600
    lora_steps: int = 150
    batch_size: int = 16
    lr_full: float = 2e-3
    lr_lora: float = 5e-4
    lr_warmup_steps: int = 20          # linear learning-rate warm-up before the cosine decay
    single_turn_steps: Optional[int] = None  # None = same budget as the zoom model
    # the single-turn arm asks with protocol.ONE_TURN_INSTRUCTION, in training and in evaluation: the shipped
    # base was pretrained on both formats (pretraining's single_turn share) and answers in one turn when asked
    one_turn_instruction: bool = True
    checkpoint_every: int = 100
    engine: str = "trl"                # "trl": TRL's SFTTrainer; "explicit": the workbook's loop (same batches)


GRPO_ENGINES = ("explicit", "trl")
LOSS_NORMS = ("sequence", "token", "constant")
POLICY_TURNS = ("both", "turn1", "turn2")


@dataclass
class GRPOConfig:
    """GRPO: P prompts x G rollouts per step; estimator "group" (paper), "batch" or "credit"."""

    steps: int = 40
    prompts_per_step: int = 2
    lr: float = 1e-4
    beta: float = 0.0                  # KL weight to the SFT policy
    estimator: str = "credit"
    paper_group_row: bool = True       # also train (and evaluate) the paper-literal "group" estimator
    micro_batch: int = 16              # trajectories per forward pass of the loss
    checkpoint_every: int = 10
    engine: str = "explicit"           # "explicit": the workbook's step; "trl": TRL's GRPOTrainer (same prompts)
    use_vllm: bool = False             # engine "trl" on CUDA: generate with vLLM (colocated) instead of HF generate
    # Sample efficiency (explicit engine): several clipped updates per batch of rollouts, how the token
    # losses are averaged, and dynamic sampling (groups whose G rewards are all equal carry no gradient:
    # drop them and draw replacement prompts, up to `refill_rounds` extra rollout rounds per step).
    ppo_epochs: int = 1
    loss_norm: str = "sequence"        # "sequence" (GRPO), "token" (DAPO), "constant" (Dr. GRPO)
    refill_rounds: int = 0
    # Label-balanced prompts: each step's prompts ask about one attribute and cover its labels in turn, so
    # the pushes of their groups towards their own right answers cancel in the answer prior.
    balance_labels: bool = False
    # Which turn's tokens carry the advantage: a reward that reads only turn 1 (the box) has no credit to give
    # turn 2's tokens, and spreading it there adds noise only. The KL term still covers both turns.
    policy_turns: str = "both"         # "both", "turn1" (the reasoning and tool call), "turn2" (the answer turn)

    def __post_init__(self):
        if self.engine not in GRPO_ENGINES:
            raise ValueError(f"unknown GRPO engine {self.engine!r}; choose one of {GRPO_ENGINES}")
        if self.loss_norm not in LOSS_NORMS:
            raise ValueError(f"unknown GRPO loss_norm {self.loss_norm!r}; choose one of {LOSS_NORMS}")
        if self.policy_turns not in POLICY_TURNS:
            raise ValueError(f"unknown GRPO policy_turns {self.policy_turns!r}; choose one of {POLICY_TURNS}")
        if self.ppo_epochs < 1:
            raise ValueError(f"GRPO ppo_epochs must be >= 1, got {self.ppo_epochs}")
        if self.engine == "trl":   # TRL's GRPOTrainer is driven with one pass and its own sampler
            changed = [f"{k}={getattr(self, k)!r}" for k, default in EXPLICIT_ONLY.items() if getattr(self, k) != default]
            if changed:
                raise ValueError(f"GRPO {', '.join(changed)}: only the explicit engine has these options; set "
                                 "grpo__engine=explicit or leave them at their defaults")


# GRPOConfig options only the explicit engine implements, with their defaults (the TRL engine refuses others).
EXPLICIT_ONLY = dict(ppo_epochs=1, loss_norm="sequence", refill_rounds=0, balance_labels=False, policy_turns="both")


@dataclass
class EvalConfig:
    """Evaluation: sampled rollouts per case, cases per generation batch, bootstrap resamples."""

    rollouts: int = 8
    batch_size: int = 16
    bootstrap_samples: int = 1000


AUX_LOSSES = ("mask", "pos", "attn")  # every auxiliary loss pretraining knows
DEFAULT_AUX = ("mask", "pos")          # the shipped recipe: the attn loss measured no help (docs/base.md ablation)


@dataclass
class PretrainConfig:
    """One pretraining run (:mod:`zoomdx_lib.train.pretrain`). `aux_weights` weighs each auxiliary loss
    against the text loss; the pixel bounds are the model's and the crop is the rollout's (pixels of the
    model-input image)."""

    steps: int = 2400
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 50
    organs: tuple[str, ...] = ("liver", "breast")
    image_size: int = 256
    crop_pixels: int = RolloutConfig.crop_pixels
    min_pixels: int = ModelConfig.min_pixels
    max_pixels: int = ModelConfig.max_pixels
    aux: tuple[str, ...] = DEFAULT_AUX
    aux_weights: dict = field(default_factory=lambda: dict(mask=1.0, pos=1.0, attn=0.5))
    attn_head: int = 0                 # the head of each layer the attention loss guides
    rationales: float = 0.0            # share of cases whose turns carry the SFT data's rationales (else a fixed one)
    curriculum_steps: int = 0          # easy contrast first: these first steps draw no isoechoic lesion
    single_turn: float = 0.0           # share of cases answered in one turn from the full view (no tool call)
    real_data: Optional[str] = None    # a real data SPEC (bus_bra:PATH, ...) mixed into the stream, train folds only
    real_folds: tuple[int, ...] = (1, 2)   # its folds (BUS-BRA's fold 3 is the workbook's test fold: refused)
    real_share: float = 0.0            # share of the stream's cases drawn from `real_data`
    crop_context: float = 0.0          # the crop widened by this fraction of the box's sides (surrounding tissue)
    synth_style: str = "default"       # imaging style of the synthetic cases of the style's organs (data.synth.STYLES)
    seed: int = 0                      # model init, stream and sampler
    init_from: Optional[str] = None    # a pretraining checkpoint (with its heads) to continue from, fresh schedule
    checkpoint_every: int = 100
    tiny: dict = field(default_factory=lambda: dict(TINY_SIZES))

    @classmethod
    def from_dict(cls, raw: dict) -> "PretrainConfig":
        """The config a run wrote as JSON (``pretrain_config.json``, a card's ``config``): lists back to
        tuples; keys this version does not know are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k in ("organs", "aux", "real_folds") else v for k, v in raw.items() if k in known})

    def __post_init__(self):
        unknown = set(self.aux) - set(AUX_LOSSES)
        if unknown:
            raise ValueError(f"unknown auxiliary loss(es) {sorted(unknown)}; choose from {AUX_LOSSES}")
        for name in ("single_turn", "real_share", "rationales"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} = {getattr(self, name)} is a share of the stream: it must lie in [0, 1]")
        if not (isinstance(self.crop_context, (int, float)) and 0.0 <= self.crop_context <= 2.0):
            raise ValueError(f"crop_context = {self.crop_context!r}: a fraction of the box's sides in [0, 2]")
        if self.real_share and not self.real_data:
            raise ValueError("real_share > 0 needs real_data, a data SPEC such as bus_bra:bus_bra")
        if self.real_data and str(self.real_data).startswith("bus_bra") and BUS_BRA_TEST_FOLD in self.real_folds:
            raise ValueError(f"real_folds {tuple(self.real_folds)}: BUS-BRA fold {BUS_BRA_TEST_FOLD} is the test fold "
                             "(the workbook evaluates on it); pretrain on folds 1-2 only")


@dataclass
class Profile:
    """Everything a run needs to know about its size, one config per stage."""

    name: str
    seed: int = 0
    device: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    hp: PaperHyperParams = PAPER

    @property
    def G(self) -> int:
        return self.hp.group_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SMOKE_TINY = dict(text_hidden=64, text_layers=2, text_heads=2, text_kv_heads=1, text_intermediate=128,
                    vision_hidden=64, vision_depth=2, vision_heads=2, vision_intermediate=128)

PROFILES: dict[str, Profile] = {
    # Both CPU profiles start from the shipped pretrained base and then follow the paper: LoRA SFT (vision
    # tower frozen), GRPO. `model__path=None` builds the tiny model from random weights instead, with a
    # from-scratch SFT stage first (`sft.full_steps`, `sft.warmup_steps`; _SMOKE_TINY sizes in smoke).
    "smoke": Profile(
        name="smoke",
        model=ModelConfig(path=str(SHIPPED_BASE), tiny=_SMOKE_TINY),
        data=DataConfig(n_train_per_organ=48, n_test_per_organ=12, n_real_test=8, readability_cases=(36, 24),
                        readability_native=(512, 1.0)),
        rollout=RolloutConfig(max_new_tokens=(64, 48)),
        sft=SFTConfig(warmup_steps=0, full_steps=0, lora_steps=10, batch_size=8, checkpoint_every=5),
        grpo=GRPOConfig(steps=2, prompts_per_step=1, checkpoint_every=1),
        eval=EvalConfig(rollouts=8, batch_size=16, bootstrap_samples=200)),
    # Sized for a chain of ~16-20 minutes on 2 cores: test sets of 40 cases (the paper: 120) because 8-rollout
    # evaluation dominates; SFT batch 8 through the explicit loop (same batches and losses as TRL's
    # SFTTrainer to 2e-5, at less than half its per-step cost for this model); 30 GRPO steps per variant;
    # the paper-literal `group` GRPO row is left to smoke/paper (its update provably ignores R_group).
    "cpu": Profile(
        name="cpu",
        model=ModelConfig(path=str(SHIPPED_BASE)),
        data=DataConfig(n_test_per_organ=40, n_real_test=40),
        sft=SFTConfig(full_steps=0, lora_steps=300, batch_size=8, lr_lora=1e-3, checkpoint_every=50,
                      engine="explicit"),
        grpo=GRPOConfig(steps=30, paper_group_row=False, checkpoint_every=10)),
    "paper": Profile(
        name="paper", device="cuda",
        model=ModelConfig(path=str(REPO_ROOT / "checkpoints" / "Qwen2.5-VL-7B-Instruct"),  # git-ignored, local
                          min_pixels=56 * 56, max_pixels=28 * 28 * 1280, gradient_checkpointing=True),
        data=DataConfig(image_size=448, n_train_per_organ=4000),
        rollout=RolloutConfig(max_new_tokens=(256, 256), crop_pixels=28 * 28 * 256),
        sft=SFTConfig(full_steps=0, lora_steps=2000, batch_size=16, lr_lora=1e-4),
        grpo=GRPOConfig(steps=500, prompts_per_step=8, lr=1e-6, beta=0.0, engine="trl"),
        eval=EvalConfig(batch_size=32)),
}

STAGES = ("model", "data", "rollout", "sft", "grpo", "eval")


def parse_key_values(items) -> dict:
    """{key: value} from "key=value" strings (the commands' ``--set`` and ``--param``); a value is
    parsed as JSON when it is JSON, else kept as a string.

    >>> parse_key_values(["grpo__steps=20", "model__path=null", "sft__engine=trl"])
    {'grpo__steps': 20, 'model__path': None, 'sft__engine': 'trl'}
    """
    out = {}
    for kv in items:
        k, _, v = kv.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def get_profile(name: str, **overrides) -> Profile:
    """Return a copy of the named profile with fields replaced by `overrides`.

    ``stage__field=value`` replaces one field of a stage config (``grpo__steps=3``) or of the paper's
    hyper-parameters (``hp__lora_dropout=0.0``); a stage name takes a whole config object
    (``model=ModelConfig(path=...)``); ``seed``, ``device``, ``hp`` replace top-level fields. Raises
    ValueError naming the unknown profile, stage or field.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    base = PROFILES[name]
    top = {f.name for f in dataclasses.fields(Profile)}
    plain, nested = {}, {}
    for key, value in overrides.items():
        stage, sep, fld = key.partition("__")
        if sep:
            if stage not in STAGES + ("hp",):
                raise ValueError(f"unknown profile stage {stage!r} in {key!r}; stages: {STAGES} (and hp)")
            known = {f.name for f in dataclasses.fields(getattr(base, stage))}
            if fld not in known:
                raise ValueError(f"unknown field {fld!r} of profile stage {stage!r}; fields: {sorted(known)}")
            nested.setdefault(stage, {})[fld] = value
        elif key in top:
            plain[key] = value
        else:
            raise ValueError(f"unknown profile field(s) [{key!r}]; top-level fields: {sorted(top)}, "
                             f"or stage__field for a stage in {STAGES}")
    profile = dataclasses.replace(base, **plain)
    stages = {stage: dataclasses.replace(getattr(profile, stage), **fields) for stage, fields in nested.items()}
    # Stage configs are mutable dataclasses: copy every one so a caller never edits PROFILES.
    copies = {s: dataclasses.replace(getattr(profile, s)) for s in STAGES if s not in stages}
    return dataclasses.replace(profile, **copies, **stages)

"""Driver for tests/train/test_multiprocess.py: GRPO steps through TRL's GRPOTrainer with scripted completions
(the texts of tests/train/test_grpo_trl.py; TRL's tool loop, crop, rewards, advantages and loss run for real) and
plain SGD, in one process or under ``accelerate launch``: the same global batch must give the same weights.

    python tests/train/multiprocess_grpo_driver.py MODEL_DIR OUT_DIR STEPS
"""
import functools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_grpo_trl import ROLLOUT, TURN1, Script, _load, _sample  # noqa: E402

from zoomdx_lib.config import PAPER, GRPOConfig  # noqa: E402
from zoomdx_lib.train import grpo_trl, grpo_trl_render  # noqa: E402
from zoomdx_lib.train.common import rank_param_diff  # noqa: E402


def main(model_dir, out_dir, steps):
    rng = np.random.default_rng(0)
    arr = (rng.rayleigh(0.3, (256, 256)).clip(0, 1) * 255).astype("uint8")
    arr[90:150, 60:140] //= 3
    image = Image.fromarray(arr)
    items = [(_sample(f"s{i}", i % 2), image) for i in range(4)]
    model, processor = _load(model_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    cfg = GRPOConfig(steps=int(steps), prompts_per_step=2, micro_batch=4, engine="trl", estimator="credit")
    script = Script(processor, TURN1)
    diffs = []
    with grpo_trl_render.tool_rendering(processor):
        trainer = grpo_trl.build_trainer(model, processor, items, cfg, out_dir, "uncertainty", ROLLOUT, PAPER,
                                         optimizer=opt)
        trainer._generate_single_turn = functools.partial(script.trl, trainer)
        orig_step = trainer.optimizer.step

        def step_and_check(*a, **k):
            out = orig_step(*a, **k)
            diffs.append(rank_param_diff(model))
            return out
        trainer.optimizer.step = step_and_check
        model.train()
        trainer.train()
    if PartialState().is_main_process:
        model.save_pretrained(Path(out_dir) / "adapter", safe_serialization=True)
        (Path(out_dir) / "sync.json").write_text(json.dumps({"rank_param_diff": diffs,
                                                            "advantages": trainer.last_advantages.tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:])

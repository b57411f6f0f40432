"""The memory plan: exact parameter counts from a config, and estimates that move the right way."""
import json

import pytest

from zoomdx_lib.config import get_profile
from zoomdx_lib.train.plan import load_config, memory_plan, model_sizes


def test_7b_counts_match_the_published_model():
    sizes = model_sizes(load_config(config="qwen2.5-vl-7b-instruct"), lora_rank=32)
    assert 8.28e9 < sizes.params < 8.30e9            # Qwen2.5-VL-7B-Instruct: 8.29 B parameters
    assert 1.2e8 < sizes.trainable < 1.3e8           # LoRA r=32 on the LM + the merger: ~125 M


def test_plan_grows_with_the_micro_batch_and_shrinks_with_checkpointing():
    cfg = load_config(config="qwen2.5-vl-7b-instruct")
    small = memory_plan(get_profile("paper", grpo__micro_batch=1), cfg)
    big = memory_plan(get_profile("paper", grpo__micro_batch=16), cfg)
    assert big["gib"]["grpo_activations_per_micro_batch"] > 10 * small["gib"]["grpo_activations_per_micro_batch"]
    assert big["gib"]["weights"] == small["gib"]["weights"] and big["tokens"] == small["tokens"]
    full = memory_plan(get_profile("paper", model__gradient_checkpointing=False), cfg)
    assert full["gib"]["sft_activations_per_batch"] > 3 * big["gib"]["sft_activations_per_batch"]
    assert big["fits"] and not full["fits"]          # one 80 GiB GPU needs checkpointing for the paper's SFT batch


@pytest.mark.parametrize("fits,n", [(True, 1), (True, 8), (False, 1), (False, 8)])
def test_shipped_launch_configs_load_in_accelerate(fits, n):
    from accelerate.commands.config.config_args import load_config_from_file
    from zoomdx_lib.config import REPO_ROOT
    from zoomdx_lib.train.plan import launch_config
    path = REPO_ROOT / launch_config(fits, n)
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes == n and cfg.mixed_precision == "bf16"
    assert (cfg.distributed_type.value == "DEEPSPEED") == (not fits)
    if not fits:
        ds = json.loads((REPO_ROOT / cfg.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3
        assert ("offload_param" in ds["zero_optimization"]) == (n == 1)


def test_plan_picks_data_parallel_for_the_7b_on_80_gib_and_zero3_below():
    from zoomdx_lib.train.plan import load_config, memory_plan
    prof = get_profile("paper")
    assert memory_plan(prof, load_config(), 80.0)["launch"] == {1: "configs/accelerate/1gpu.yaml",
                                                               8: "configs/accelerate/8gpu_ddp.yaml"}
    assert memory_plan(prof, load_config(), 24.0)["launch"][8] == "configs/accelerate/8gpu_zero3.yaml"

"""The memory plan: exact parameter counts from a config, and estimates that move the right way."""
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

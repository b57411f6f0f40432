"""The paper profile's code path on CPU: a paper-shaped tiny Qwen2.5-VL (the 7B's topology, chat template
and special tokens) through the whole chain with `model.path` pointing at it — LoRA-only SFT, GRPO,
evaluation tables. This is what guards the 7B path in CI; only sizes and step counts are overridden."""
import json

import pytest

from zoomdx_lib.config import get_profile
from zoomdx_lib.model.build import build_tiny_checkpoint
from zoomdx_lib.model.load import load_model_and_processor
from zoomdx_lib.workbook.rundir import read_metrics
from zoomdx_lib.workbook.runner import run_chain

PAPER = get_profile("paper")
# Sizes and step counts only: the paper's pixel bounds, image size, LoRA, estimators and hyper-parameters stay.
SMALL = dict(device="cpu", data__n_train_per_organ=4, data__n_test_per_organ=2, data__n_real_test=2,
             data__readability_cases=[12, 8],
             rollout__max_new_tokens=[24, 24], sft__lora_steps=2, sft__batch_size=2, sft__checkpoint_every=1,
             grpo__steps=1, grpo__prompts_per_step=1, grpo__micro_batch=4, eval__rollouts=2, eval__batch_size=4,
             eval__bootstrap_samples=20)


@pytest.fixture(scope="module")
def paper_shaped(tmp_path_factory):
    path = tmp_path_factory.mktemp("paper_shaped")
    return build_tiny_checkpoint(path, PAPER.model.min_pixels, PAPER.model.max_pixels, seed=0, shape="paper")


def test_paper_shaped_model_has_the_7b_topology(paper_shaped):
    model, processor = load_model_and_processor(paper_shaped)
    text, vision = model.config.text_config, model.config.vision_config
    assert text.rope_parameters["mrope_section"] == [4, 6, 6]          # 16 : 24 : 24 of head_dim / 2
    assert vision.fullatt_block_indexes == [1, 3] and vision.window_size == 112
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert not model.config.tie_word_embeddings
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                            "text": "Q"}]}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert "<|box_start|>" in processor.tokenizer.get_vocab()


@pytest.mark.slow
def test_paper_profile_runs_end_to_end_on_cpu(paper_shaped, tmp_path):
    run = tmp_path / "paper_run"
    overrides = dict(SMALL, model__path=str(paper_shaped))
    manifest = run_chain("paper", run, seed=0, extra_params={"overrides": overrides}, log=print)
    assert all(e["status"] == "done" for e in manifest["notebooks"].values())
    m02 = read_metrics(run, "02_sft_zoom_then_diagnose")
    assert m02["models"]["zoom_sft"]["base"] == str(paper_shaped)     # LoRA on the given checkpoint
    assert not (run / "models" / "sft_zoom_full").exists()            # no from-scratch stage
    assert json.loads((run / "checkpoints" / "sft_zoom_lora" / "latest.json").read_text())["step"] == 2
    m03 = read_metrics(run, "03_grpo_uncertainty_alignment")
    assert {"grpo_accuracy_only", "grpo_uncertainty_credit", "grpo_uncertainty_group"} <= set(m03["models"])
    assert m03["engine"] == "trl"                                     # the paper profile trains GRPO through TRL
    log = (run / "checkpoints" / "grpo_uncertainty_credit" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == list(range(1, SMALL["grpo__steps"] + 1))
    m04 = read_metrics(run, "04_calibration_analysis")
    assert "oracle_crop" in m04["methods"] and m04["numbers"]
    assert (run / "tables" / "table1.md").exists() and (run / "tables" / "table2.md").exists()

"""`make gpu-smoke`'s code path on CPU with the paper-shaped tiny model: SFT through TRL and GRPO at G=8 run,
and the report carries the plan's estimates beside the measured step times and token counts."""
import json

import pytest

from zoomdx_lib.workbook import gpu_smoke


@pytest.mark.slow
def test_gpu_smoke_code_path_on_cpu(tmp_path):
    small = {"sft__batch_size": 2, "grpo__prompts_per_step": 1, "rollout__max_new_tokens": (24, 24),
             "data__image_size": 256}
    report = gpu_smoke.run("cpu", tiny=True, sft_steps=2, grpo_steps=1, out=tmp_path, overrides=small)
    assert report["sft"]["steps"] == 2 and len(report["sft"]["step_s"]) == 2
    assert report["grpo"]["steps"] == 1
    # random weights never stop early: every one of the G=8 rollouts writes both turns to the limit
    assert 0 < report["grpo"]["generated_tokens"][0] <= 8 * (24 + 24)
    assert report["plan"]["grpo_total"] > 0 and report["sft"]["plan_total_gib"] == report["plan"]["sft_total"]
    assert json.loads(json.dumps(report)) == report     # one JSON line


def test_gpu_smoke_refuses_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(gpu_smoke.torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err

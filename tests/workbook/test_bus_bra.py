"""Real breast (BUS-BRA) command: zero-shot and after-LoRA reports on the same test cases, disjoint folds."""
import json

import pytest
from safetensors.torch import load_file

from zoomdx_lib.workbook import bus_bra


def test_zero_shot_then_lora_on_train_folds(real_data, tmp_path):
    root = real_data("bus_bra")
    out = tmp_path / "bb"
    assert bus_bra.main(["--root", str(root), "--limit", "6", "--steps", "2", "--batch-size", "2",
                         "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    zero, after = report["zero_shot"], report["after_sft"]
    assert zero["n"] == after["n"] == 6 and report["n_train"] == 6
    assert [c["id"] for c in zero["cases"]] == [c["id"] for c in after["cases"]]
    train_ids = {s.id for s, _ in bus_bra.load_cases(root, [1, 2], 6)}
    assert not train_ids & {c["id"] for c in zero["cases"]}
    for key in ("miou", "acc"):
        d = report["difference"][key]
        assert d[1] <= d[0] <= d[2]
        assert d[0] == pytest.approx(after[key] - zero[key], abs=1e-9)
    lora_b = [v for k, v in load_file(str(out / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)   # B starts at 0: the adapter was trained


def test_no_case_in_the_folds_is_a_clear_error(real_data):
    with pytest.raises(ValueError, match="no case in folds"):
        bus_bra.load_cases(real_data("bus_bra"), [9])

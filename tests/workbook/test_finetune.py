"""Fine-tuning on any data: folds or patient-disjoint fractions, zero-shot then LoRA on the same test cases,
paired intervals, a resumed rerun that redoes nothing, and the BUS-BRA command as a thin call of it."""
import json

import pytest
from safetensors.torch import load_file

from zoomdx_lib.data.examples import write_bus_bra, write_manifest
from zoomdx_lib.data.sources import DataSpec, fraction_split, load_cases, patient_of
from zoomdx_lib.workbook import bus_bra, finetune

QUICK = ["--profile", "smoke", "--steps", "2", "--batch-size", "2", "--quiet"]


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path / "data"))
    write_bus_bra(tmp_path / "data" / "bb", n=12)
    write_manifest(tmp_path / "data" / "mine", n=12)
    return tmp_path / "data"


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_folds_zero_shot_then_lora_and_a_rerun_redoes_nothing(data_root, tiny_path, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ft"
    argv = ["--data", "bus_bra:bb", "--train", "1,2", "--test", "3", "--model", str(tiny_path), "--out", str(out), *QUICK]
    assert finetune.main(argv) == 0
    report = _report(out)
    zero, after = report["zero_shot"], report["after_sft"]
    assert report["train_folds"] == [1, 2] and report["test_folds"] == [3] and report["shared_patients"] == 0
    assert zero["n"] == after["n"] == report["n_test"] == 4 and report["n_train"] == 8
    assert [c["id"] for c in zero["cases"]] == [c["id"] for c in after["cases"]]
    for key in ("miou", "acc"):
        d = report["difference"][key]
        assert d[1] <= d[0] <= d[2] and d[0] == pytest.approx(after[key] - zero[key], abs=1e-9)
    lora_b = [v for k, v in load_file(str(out / "adapter" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)   # B starts at 0: the adapter was trained
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "cases" not in line["zero_shot"] and line["after_sft"]["n"] == 4

    def no_more(*a, **k):
        raise AssertionError("a finished evaluation ran again")
    monkeypatch.setattr(finetune, "evaluate", no_more)
    assert finetune.main(argv) == 0
    again = _report(out)
    assert again["zero_shot"] == zero and again["after_sft"] == after and again["sft"] == report["sft"]


def test_patient_disjoint_fraction_split_of_a_manifest(data_root, tiny_path, tmp_path):
    out = tmp_path / "ftm"
    assert finetune.main(["--data", "manifest:mine/cases.csv", "--test", "0.34", "--split-seed", "3",
                          "--model", str(tiny_path), "--out", str(out), *QUICK[:2], "--steps", "0", "--quiet"]) == 0
    report = _report(out)
    assert report["by"] == "patient" and report["patients"] == {"train": 4, "test": 2}
    assert report["n_test"] == 4 and report["shared_patients"] == 0 and "after_sft" not in report
    assert report["imports"]["all"].startswith("manifest")


def test_fraction_split_keeps_patients_together_and_covers_only_what_was_asked(data_root):
    items, _ = load_cases("manifest:mine/cases.csv")
    tr, te, info = fraction_split(items, 0.5, 0.5, seed=0)
    assert {patient_of(s) for s, _ in tr}.isdisjoint({patient_of(s) for s, _ in te})
    assert len(tr) + len(te) == 12 and info["by"] == "patient"
    tr, te, info = fraction_split(items, 0.25, 0.25, seed=0)          # half the patients unused
    assert info["patients"] == {"train": 2, "test": 2} and len(tr) == len(te) == 4
    with pytest.raises(ValueError, match="at most 1 together"):
        fraction_split(items, 0.8, 0.5)


def test_split_by_folds_without_train_takes_every_other_fold(data_root):
    spec = DataSpec.parse("bus_bra:bb")
    tr, te, info = finetune.split_data(spec, None, ("folds", [3]))
    assert info["train_folds"] == [1, 2] and len(te) == 4 and len(tr) == 8
    with pytest.raises(ValueError, match="both be folds or both be fractions"):
        finetune.split_data(spec, ("fraction", 0.5), ("folds", [3]))
    with pytest.raises(ValueError, match="no case in folds"):
        finetune.split_data(spec, ("folds", [1]), ("folds", [7]))


def test_synthetic_data_splits_by_fraction_only(tiny_path, tmp_path, capsys):
    assert finetune.main(["--data", "liver", "--test", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "no folds" in capsys.readouterr().err


def test_bus_bra_command_is_finetune_with_its_flags_and_its_report(data_root, tiny_path, tmp_path):
    out = tmp_path / "bb_out"
    assert bus_bra.main(["--root", "bb", "--train-folds", "1", "--test-folds", "3", "--steps", "1", "--batch-size", "1",
                         "--model", str(tiny_path), "--profile", "smoke", "--limit", "2", "--out", str(out),
                         "--quiet"]) == 0
    report = _report(out)
    assert {"root", "test_folds", "train_folds", "model", "zero_shot", "n_train", "sft", "after_sft", "difference",
            "seconds"} <= set(report)
    assert report["root"] == str(data_root / "bb") and report["n_train"] == 2 and report["zero_shot"]["n"] == 2
    assert all(c["hit"] in (0.0, 1.0) for c in report["zero_shot"]["cases"])


def test_real_bus_bra_quick_finetune(real_data, tiny_path, tmp_path):
    root = real_data("bus_bra")
    out = tmp_path / "real"
    assert finetune.main(["--data", f"bus_bra:{root}", "--train", "1", "--test", "3", "--limit", "3",
                          "--model", str(tiny_path), "--out", str(out), *QUICK]) == 0
    report = _report(out)
    assert report["n_train"] == 3 and report["zero_shot"]["n"] == 3 and report["test_folds"] == [3]

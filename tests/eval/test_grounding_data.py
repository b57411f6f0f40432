"""The grounding command on any data: a manifest of generated images, a BUS-BRA-shaped folder, a BUSI folder,
per-attribute lines, the per-case CSV, the mean-box baseline in image fractions, clear errors."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from zoomdx_lib.data import importers
from zoomdx_lib.data.dialogue import question_for
from zoomdx_lib.data.examples import write_bus_bra, write_manifest
from zoomdx_lib.data.sources import DataSpec, load_cases
from zoomdx_lib.eval.grounding import main, mean_box_miou

SMOKE = ["--profile", "smoke", "--quiet"]


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path / "data"))
    write_manifest(tmp_path / "data" / "mine", n=6)
    write_bus_bra(tmp_path / "data" / "bb", n=12)
    return tmp_path / "data"


def _lines(capsys):
    return [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]


def test_mean_box_is_averaged_in_image_fractions():
    # the same lesion, a quarter of the image, on a small and a large image: the fraction mean box fits both
    cases = [dict(true_box=(10, 10, 30, 30), width=40, height=40), dict(true_box=(100, 50, 300, 150), width=400, height=200)]
    assert mean_box_miou(cases) == pytest.approx(1.0)
    pixel_mean = np.mean([c["true_box"] for c in cases], axis=0)    # what averaging absolute pixels would give
    assert pixel_mean.tolist() == [55, 30, 165, 90]


def test_manifest_per_attribute_lines_and_the_case_csv(data_root, tiny_path, tmp_path, capsys):
    out = tmp_path / "cases.csv"
    assert main(["--data", "manifest:mine/cases.csv", "--model", str(tiny_path), "--out", str(out), *SMOKE]) == 0
    lines = _lines(capsys)
    assert [x["attribute"] for x in lines] == ["echo", "shape", "margin", "all"]
    assert [x["n"] for x in lines] == [2, 2, 2, 6]
    keys = {"data", "organ", "n", "miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc",
            "tool_call_valid", "answer_valid", "seed", "model", "seconds"}
    assert all(keys <= set(x) for x in lines) and lines[-1]["data"] == "manifest:mine/cases.csv"
    assert lines[-1]["organ"] == "breast" and lines[-1]["bad_records"] == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {r["attribute"] for r in rows} == {"echo", "shape", "margin"}
    assert {(r["width"], r["height"]) for r in rows} == {("128", "128"), ("160", "120"), ("96", "96"), ("120", "150")}
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(lines[-1]["miou"])


def test_bus_bra_folds_n_and_against(data_root, tiny_path, capsys):
    assert main(["--data", "bus_bra:bb", "--folds", "2", "--n", "3", "--model", str(tiny_path),
                 "--against", str(tiny_path), *SMOKE]) == 0
    lines = _lines(capsys)
    assert [x["attribute"] for x in lines] == ["margin", "all"] and lines[-1]["n"] == 3
    assert lines[-1]["miou_diff"] == [0.0, 0.0, 0.0] and lines[-1]["acc_diff"] == [0.0, 0.0, 0.0]
    items, _ = load_cases("bus_bra:bb", 3, folds=[2])
    assert all(s.meta["kfold"] == 2 for s, _ in items) and items[0][0].question


def test_busi_folder(tmp_path, tiny_path, capsys):
    root = tmp_path / "busi"
    for cls, box in (("benign", (10, 12, 40, 30)), ("malignant", (50, 20, 90, 60))):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100), np.uint8)).save(root / cls / f"{cls} (1).png")
        mask = np.zeros((80, 100), np.uint8)
        mask[box[1]:box[3], box[0]:box[2]] = 255
        Image.fromarray(mask).save(root / cls / f"{cls} (1)_mask.png")
    assert main(["--data", f"busi:{root}", "--model", str(tiny_path), *SMOKE]) == 0
    assert _lines(capsys)[-1]["n"] == 2


def test_a_strict_import_lists_every_bad_record_and_exits_2(data_root, tiny_path, capsys):
    path = data_root / "mine" / "cases.csv"
    text = path.read_text().splitlines()
    text[2] = text[2].replace("images/", "images/none_")   # a missing image
    cols = text[3].split(",")
    text[3] = ",".join(cols[:7] + ["Purple"] + cols[8:])   # an unknown label
    path.write_text("\n".join(text) + "\n")
    assert main(["--data", "manifest:mine/cases.csv", "--strict", "--model", str(tiny_path), *SMOKE]) == 2
    err = capsys.readouterr().err
    assert "2 bad records" in err and "line 3" in err and "line 4" in err


@pytest.mark.parametrize("argv, words", [(["--data", "liver"], "needs --seed"),
                                         (["--data", "dicom:x"], "expected a synthetic organ"),
                                         (["--data", "manifest:nowhere.csv"], "does not exist"),
                                         (["--data", "bus_bra:bb", "--folds", "9"], "no case in folds [9]")])
def test_clear_errors(argv, words, data_root, tiny_path, capsys):
    assert main(argv + ["--model", str(tiny_path)]) == 2
    assert words in capsys.readouterr().err


def test_relative_spec_paths_resolve_under_zoomdx_data(data_root):
    assert DataSpec.parse("bus_bra:bb").path == data_root / "bb"
    assert DataSpec.parse("manifest:mine/cases.csv").root == data_root / "mine"


def test_real_bus_bra_fold_3_is_the_importers_fold_3_with_the_bus_bra_questions(real_data):
    root = real_data("bus_bra")
    items, report = load_cases(f"bus_bra:{root}", 5, folds=[3])
    samples, _ = importers.import_bus_bra(root, folds=[3], limit=5)
    assert [s.id for s, _ in items] == [s.id for s in samples]
    assert [s.question for s, _ in items] == [question_for("margin", f"busbra:{s.id}") for s in samples]
    assert report.n_ok == 5 and all(s.meta["kfold"] == 3 for s, _ in items)

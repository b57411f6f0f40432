"""Data SPECs: parsing, paths under $ZOOMDX_DATA, folds of a manifest, label maps inline or from a file."""
import json

import pytest

from zoomdx_lib.data.examples import write_manifest
from zoomdx_lib.data.sources import DataSpec, fold_of, load_cases, patient_of, read_label_map


def test_spec_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path))
    assert DataSpec.parse("thyroid") == DataSpec("synthetic", "thyroid", organ="thyroid")
    assert DataSpec.parse("busi:busi").path == tmp_path / "busi"
    assert DataSpec.parse(f"manifest:{tmp_path}/m/cases.csv").root == tmp_path / "m"
    for bad in ("kidney", "bus_bra:", "dicom:x", "manifest"):
        with pytest.raises(ValueError, match="bus_bra:PATH, busi:PATH, manifest:PATH"):
            DataSpec.parse(bad)


def test_manifest_folds_patients_and_first_n(tmp_path):
    path = write_manifest(tmp_path / "m", n=6)
    text = path.read_text().splitlines()
    text = [text[0] + ",fold"] + [f"{line},{1 + k % 2}" for k, line in enumerate(text[1:])]
    path.write_text("\n".join(text) + "\n")
    items, report = load_cases(f"manifest:{path}", folds=[2])
    assert [fold_of(s) for s, _ in items] == [2, 2, 2] and report.n_ok == 6
    assert patient_of(items[0][0]) == "patient:p0" and items[0][1].mode == "RGB"
    assert len(load_cases(f"manifest:{path}", 2)[0]) == 2
    with pytest.raises(ValueError, match=r"no case in folds \[5\]"):
        load_cases(f"manifest:{path}", folds=[5])


def test_label_map_inline_file_or_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "map.json").write_text(json.dumps({"heterogeneous": "Isoechoic"}))
    assert read_label_map("map.json") == {"heterogeneous": "Isoechoic"}
    assert read_label_map('{"a": "Oval"}') == {"a": "Oval"} and read_label_map(None) is None
    with pytest.raises(FileNotFoundError, match="neither inline JSON nor a file"):
        read_label_map("nope.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_label_map('{"a": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        read_label_map("list.json")

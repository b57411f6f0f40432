"""Import reports a person can act on: one strict error listing every bad record, lenient imports that
keep the good ones and say why the rest went, per-attribute limits that say how many were kept."""
import csv

import numpy as np
import pytest
from PIL import Image

from zoomdx_lib.config import get_profile
from zoomdx_lib.data import importers, store
from zoomdx_lib.data.import_report import ImportProblems, problem_kind

TINY = get_profile("smoke", data__n_train_per_organ=6, data__n_test_per_organ=3, data__n_real_test=2)


def _image(path, w=80, h=60):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), 90, np.uint8)).save(path)


def _csv(path, rows, columns=("id", "image", "x1", "y1", "x2", "y2", "attribute", "label", "c")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    return path


def _row(i, **over):
    return dict(dict(id=f"r{i}", image=f"img/{i}.png", x1=5, y1=5, x2=40, y2=30, attribute="echo",
                     label="hypoechoic", c=1), **over)


def _bad_manifest(root):
    for i in range(4):
        _image(root / "img" / f"{i}.png")
    rows = [_row(0), _row(1),
            _row(2, image="img/none.png"),                # missing image (line 4)
            _row(3, x2=200),                              # box outside the 80x60 image (line 5)
            _row(4, image="img/2.png", label="heterogeneous"),   # unknown label (line 6)
            _row(1, image="img/3.png"),                   # duplicate id r1 (line 7)
            _row(5, image="img/none2.png")]               # a second missing image (line 8)
    path = _csv(root / "cases.csv", [dict(r, questions="Echo?") for r in rows],   # "questions": a wrong column name
                columns=("id", "image", "x1", "y1", "x2", "y2", "attribute", "label", "c", "questions"))
    return path


def test_strict_raises_once_with_every_bad_record_and_the_count_per_problem(tmp_path):
    path = _bad_manifest(tmp_path)
    with pytest.raises(ImportProblems) as e:
        importers.import_manifest(path)
    msg = str(e.value)
    assert msg.startswith(f"manifest {path}: 6 bad records (")
    for kind, n in [("missing image", 2), ("box outside the image", 1), ("unknown label", 1), ("duplicate id", 1),
                    ("wrong column name", 1)]:
        assert f"{kind}: {n}" in msg, msg
    for words in ["line 1 (header): column 'questions' is not a manifest column: did you mean 'question'",
                  "line 4 (id='r2', image='img/none.png')", "image file is missing",
                  "line 5 (id='r3'", "outside the 80x60 image", "line 6 (id='r4'", "unknown echo label 'heterogeneous'",
                  "line 7 (id='r1'", "duplicate id 'r1'", "line 8 (id='r5'"]:
        assert words in msg, (words, msg)
    assert len(e.value.problems) == 6 and e.value.report.n_ok == 2 and "keep the 2 good ones" in msg


def test_lenient_keeps_the_good_records_and_reports_the_rest(tmp_path):
    samples, report = importers.import_manifest(_bad_manifest(tmp_path), strict=False)
    assert [s.id for s in samples] == ["r0", "r1"]
    assert report.problem_counts() == {"missing image": 2, "box outside the image": 1, "unknown label": 1,
                                       "duplicate id": 1, "wrong column name": 1}
    assert report.kept == {"echo": 2}
    line = report.summary()
    assert "2 samples (echo 2), 6 bad records skipped (missing image x2" in line and "'heterogeneous' x1" in line


def test_more_than_twenty_bad_records_are_counted_and_the_first_twenty_shown(tmp_path):
    _image(tmp_path / "img" / "0.png")
    path = _csv(tmp_path / "many.csv", [_row(0)] + [_row(i, image=f"img/gone{i}.png") for i in range(1, 26)])
    with pytest.raises(ImportProblems) as e:
        importers.import_manifest(path)
    msg = str(e.value)
    assert "25 bad records (missing image: 25)" in msg and "... and 5 more" in msg
    assert "line 22 " in msg and "line 23 " not in msg   # the first 20 bad records: lines 3..22
    assert len(e.value.problems) == 25


def test_a_misspelt_required_column_names_itself_and_every_record_it_broke(tmp_path):
    _image(tmp_path / "img" / "0.png")
    rows = [{("lable" if k == "label" else k): v for k, v in _row(i, image="img/0.png").items()} for i in range(2)]
    path = _csv(tmp_path / "typo.csv", rows, columns=("id", "image", "x1", "y1", "x2", "y2", "attribute", "lable", "c"))
    with pytest.raises(ImportProblems) as e:
        importers.import_manifest(path)
    assert "3 bad records (no label: 2, wrong column name: 1)" in str(e.value)
    assert "did you mean 'label'" in str(e.value)


def test_unknown_columns_without_a_close_match_are_noted_not_bad(tmp_path):
    _image(tmp_path / "img" / "0.png")
    path = _csv(tmp_path / "extra.csv", [dict(_row(0), scanner="GE", Patient="p1", fold=2)],
                columns=("id", "image", "x1", "y1", "x2", "y2", "attribute", "label", "c", "scanner", "Patient", "fold"))
    (s,), report = importers.import_manifest(path)
    assert s.meta["patient"] == "p1" and s.meta["fold"] == 2   # column names are case-insensitive
    assert report.notes == [("extra.csv line 1 (header)", "column 'scanner' is not a manifest column, not read")]


def test_limit_per_attribute_counts_what_it_did_not_read(tmp_path):
    for i in range(6):
        _image(tmp_path / "img" / f"{i}.png")
    rows = [_row(i, attribute=a, label=lab) for i, (a, lab) in
            enumerate([("echo", "hypoechoic"), ("shape", "oval"), ("echo", "anechoic"), ("echo", "isoechoic"),
                       ("shape", "round"), ("shape", "irregular")])]
    samples, report = importers.import_manifest(_csv(tmp_path / "m.csv", rows), limit_per_attribute=2)
    assert [s.id for s in samples] == ["r0", "r1", "r2", "r4"]
    assert report.kept == {"echo": 2, "shape": 2} and report.over_limit == {"echo": 1, "shape": 1}
    assert "2 not read (limit reached: echo 1, shape 1)" in report.summary()


def test_real_splits_keep_a_limit_per_attribute_and_say_what_was_dropped(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path))
    for i in range(7):
        _image(tmp_path / "mine" / "img" / f"{i}.png")
    rows = [_row(i, attribute=a, label=lab) for i, (a, lab) in
            enumerate([("echo", "hypoechoic"), ("shape", "oval"), ("echo", "anechoic"), ("echo", "isoechoic"),
                       ("shape", "round"), ("margin", "spiculated"), ("margin", "heterogeneous")])]
    _csv(tmp_path / "mine" / "cases.csv", rows)
    result = store.import_real_splits([{"name": "mine", "importer": "manifest", "path": "mine/cases.csv"}],
                                      tmp_path / "out", TINY)["mine"]
    assert result["kept"] == {"echo": 2, "margin": 1, "shape": 2}          # n_real_test = 2 per attribute
    assert result["summary"]["n"] == 5 and result["summary"]["over_limit"] == 1
    assert result["dropped"] == {"bad": {"unknown label": 1}, "by_design": {}, "over_limit": {"echo": 1}}
    assert len(store.load_split(tmp_path / "out", "test_mine")) == 5


@pytest.mark.parametrize("problem, kind", [("x.png: cannot read image (OSError: ...)", "unreadable image"),
                                           ("path '../a.png' escapes the dataset root /d", "path outside the dataset root"),
                                           ("something new", "other")])
def test_problem_kinds(problem, kind):
    assert problem_kind(problem) == kind

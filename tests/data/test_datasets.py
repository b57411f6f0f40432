"""Importers (BUSI-style, BUS-BRA, manifest), validation, image loading, export and synthetic splits."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoomdx_lib.data import images, importers, store, synth
from zoomdx_lib.config import get_profile
from zoomdx_lib.data.dialogue import parse_dialogue
from zoomdx_lib.geometry import model_input_size
from zoomdx_lib.schema import SampleError

TINY = get_profile("smoke", data__n_train_per_organ=6, data__n_test_per_organ=3)


def save_gray(path, h=60, w=80, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, np.uint8)).save(path)
    return path


def save_mask(path, rects, h=60, w=80):
    """Mask with foreground rows y1:y2, cols x1:x2 for each (x1, y1, x2, y2)."""
    m = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in rects:
        m[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


@pytest.fixture
def busi(tmp_path):
    root = tmp_path / "busi"
    save_gray(root / "benign" / "benign (1).png")
    save_mask(root / "benign" / "benign (1)_mask.png", [(10, 5, 30, 25), (50, 40, 55, 44)])  # 400 px vs 20 px
    save_gray(root / "malignant" / "malignant (1).png")
    save_mask(root / "malignant" / "malignant (1)_mask.png", [(2, 3, 12, 9)])
    save_mask(root / "malignant" / "malignant (1)_mask_1.png", [(60, 30, 78, 58)])  # a second mask file
    save_gray(root / "normal" / "normal (1).png")
    save_mask(root / "normal" / "normal (1)_mask.png", [])
    return root


def test_mask_to_boxes_pixel_edges_and_8_connectivity():
    m = np.zeros((20, 20), bool)
    m[2:5, 3:9] = True     # 18 px, cols 3..8 -> x1=3, x2=9
    m[5, 9] = True         # touches (4, 8) diagonally: same component under 8-connectivity
    m[15:17, 15:17] = True
    assert images.mask_to_boxes(m) == [(3.0, 2.0, 10.0, 6.0)]
    assert images.mask_to_boxes(m, all_components=True) == [(3.0, 2.0, 10.0, 6.0), (15.0, 15.0, 17.0, 17.0)]
    assert images.mask_to_boxes(np.zeros((4, 4), bool)) == []


def test_import_busi_largest_component_and_proxy_labels(busi):
    samples, report = importers.import_busi(busi)
    by_id = {s.id: s for s in samples}
    assert set(by_id) == {"benign_1", "malignant_1"}
    b = by_id["benign_1"]
    assert b.box == (10.0, 5.0, 30.0, 25.0) and b.image_size == (80, 60)
    assert b.label == "Circumscribed" and b.attribute == "margin" and b.c == 1 and b.organ == "breast"
    assert b.image_path == "benign/benign (1).png"
    m = by_id["malignant_1"]
    assert m.label == "Not circumscribed" and m.box == (60.0, 30.0, 78.0, 58.0)  # union of two mask files
    assert report.n_ok == 2 and not report.problems
    assert [r for r, _ in report.notes] == ["normal/normal (1).png"]


def test_import_busi_all_components_and_label_map(busi):
    samples, _ = importers.import_busi(busi, all_components=True, default_c=0)
    ids = sorted(s.id for s in samples)
    assert ids == ["benign_1_c1", "benign_1_c2", "malignant_1_c1", "malignant_1_c2"]
    boxes = {s.id: s.box for s in samples}
    assert boxes["benign_1_c1"] == (10.0, 5.0, 30.0, 25.0) and boxes["benign_1_c2"] == (50.0, 40.0, 55.0, 44.0)
    assert all(s.c == 0 for s in samples)
    s2, _ = importers.import_busi(busi, attribute="shape", label_map={"benign": "Oval", "malignant": "Irregular"})
    assert {s.label for s in s2} == {"Oval", "Irregular"}
    with pytest.raises(ValueError, match="label_map"):
        importers.import_busi(busi, attribute="echo")


def test_import_busi_bad_records(busi):
    save_gray(busi / "benign" / "benign (2).png")  # no mask
    save_gray(busi / "benign" / "benign (3).png")
    save_mask(busi / "benign" / "benign (3)_mask.png", [])  # empty mask: zero-area box
    save_gray(busi / "benign" / "benign (4).png")
    save_mask(busi / "benign" / "benign (4)_mask.png", [(1, 1, 5, 5)], h=30, w=30)  # wrong size
    save_gray(busi / "odd" / "odd (1).png")
    save_mask(busi / "odd" / "odd (1)_mask.png", [(1, 1, 5, 5)])  # class without a label
    (busi / "benign" / "benign (5).png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save_mask(busi / "benign" / "benign (5)_mask.png", [(1, 1, 5, 5)])
    with pytest.raises(SampleError, match=r"benign/benign \(2\)\.png: no mask file"):
        importers.import_busi(busi)
    samples, report = importers.import_busi(busi, strict=False)
    assert sorted(s.id for s in samples) == ["benign_1", "malignant_1"]
    problems = dict(report.problems)
    assert "no mask" in problems["benign/benign (2).png"]
    assert "zero-area" in problems["benign/benign (3).png"]
    assert "30x30" in problems["benign/benign (4).png"]
    assert "cannot read image" in problems["benign/benign (5).png"]
    assert "unknown label" in problems["odd/odd (1).png"]
    assert "5 bad records" in report.summary()


# ----------------------------------------------------------------------------- manifest

def write_manifest(root, rows, name="manifest.jsonl"):
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = dict(id="ok", image="img/a.png", box=[5, 6, 40, 30], attribute="echo", label="hypoechoic", c=1, organ="liver")
BAD_CASES = {  # field overrides -> expected words in the error
    "missing image": (dict(id="m", image="img/nope.png"), "missing"),
    "corrupt image": (dict(id="k", image="img/corrupt.png"), "cannot read image"),
    "box outside": (dict(id="o", box=[5, 6, 90, 30]), "outside"),
    "zero area": (dict(id="z", box=[5, 6, 5, 30]), "zero"),
    "unknown label": (dict(id="u", label="purple"), "unknown echo label"),
    "duplicate id": (dict(id="ok"), "duplicate id"),
    "escaping path": (dict(id="e", image="../outside.png"), "escapes the dataset root"),
    "bad c": (dict(id="c", c=3), "c must be 0 or 1"),
    "bad box": (dict(id="b", box=[1, 2, 3]), "box must be 4 numbers"),
    "unsafe id": (dict(id="../x"), "not usable as a file name"),
    "no label": (dict(id="n", label=""), "no label"),
}


@pytest.fixture
def mroot(tmp_path):
    root = tmp_path / "data"
    save_gray(root / "img" / "a.png")
    (root / "img" / "corrupt.png").write_bytes(b"not an image at all")
    save_gray(tmp_path / "outside.png")
    return root


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_manifest_each_bad_record_named(mroot, case):
    over, words = BAD_CASES[case]
    bad = dict(GOOD, **over)
    path = write_manifest(mroot, [GOOD, bad])
    with pytest.raises(SampleError) as e:
        importers.import_manifest(path)
    msg = str(e.value)
    assert "line 2" in msg and f"id={bad['id']!r}" in msg and bad["image"] in msg and words in msg, msg
    samples, report = importers.import_manifest(path, strict=False)
    assert [s.id for s in samples] == ["ok"] and report.n_ok == 1
    assert len(report.problems) == 1 and "line 2" in report.problems[0][0] and words in report.problems[0][1]


def test_manifest_absolute_path_outside_root(mroot, tmp_path):
    path = write_manifest(mroot, [dict(GOOD, image=str(tmp_path / "outside.png"))])
    with pytest.raises(SampleError, match="escapes the dataset root"):
        importers.import_manifest(path)
    inside = write_manifest(mroot, [dict(GOOD, image=str(mroot / "img" / "a.png"))], "inside.jsonl")
    assert importers.import_manifest(inside)[0][0].image_path == "img/a.png"  # absolute but under root: fine


def test_manifest_csv_columns_and_raters(mroot):
    (mroot / "m.csv").write_text(
        "image,x1,y1,x2,y2,attribute,rater_a,rater_b,organ,question\n"
        "img/a.png,5,6,40,30,shape,oval,Oval,thyroid,Shape?\n"
        "img/a.png,1,2,20,20,margin,Circumscribed,Circumscribed,thyroid,\n")
    (mroot / "m2.csv").write_text('id,image,box,attribute,label,rater_a,rater_b\n'
                                  'x,img/a.png,"[1, 2, 20, 20]",margin,Not circumscribed,Circumscribed,ill-defined\n')
    with pytest.raises(SampleError, match="duplicate id 'a'"):  # ids default to the image stem
        importers.import_manifest(mroot / "m.csv")
    samples, report = importers.import_manifest(mroot / "m.csv", strict=False)
    s = samples[0]
    assert (s.label, s.c, s.rater_labels, s.organ, s.question) == ("Oval", 1, ("Oval", "Oval"), "thyroid", "Shape?")
    assert s.box == (5.0, 6.0, 40.0, 30.0)
    (x,), _ = importers.import_manifest(mroot / "m2.csv")
    assert (x.label, x.c, x.rater_labels) == ("Not circumscribed", 0, ("Circumscribed", "Not circumscribed"))


# ----------------------------------------------------------------------------- image loading

def test_load_image_16bit_and_rgba(tmp_path):
    a16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    im = images.load_image(tmp_path / "g16.png")
    arr = np.asarray(im)
    assert im.mode == "RGB" and im.size == (50, 40) and arr.dtype == np.uint8
    assert arr.max() == 255 and arr[0, 0, 0] == 0 and arr[20, 0, 0] < arr[39, 49, 0]
    rgba = np.zeros((30, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    im = images.load_image(tmp_path / "c.png")
    assert im.mode == "RGB" and np.asarray(im)[0, 0].tolist() == [200, 0, 0]
    with pytest.raises(SampleError, match="missing"):
        images.load_image(tmp_path / "none.png")
    # a 16-bit image imports through a manifest and exports as 8-bit PNG
    path = write_manifest(tmp_path, [dict(GOOD, image="g16.png", box=[2, 2, 30, 30])])
    samples, _ = importers.import_manifest(path)
    out = tmp_path / "out"
    store.export_samples(samples, tmp_path, out, "real_g16", TINY)
    assert Image.open(out / "images" / "ok.png").mode == "RGB"


# ----------------------------------------------------------------------------- BUS-BRA

def test_birads_confidence_proxy():
    assert importers.birads_confidence(2, "benign") == (1, "benign")
    assert importers.birads_confidence("3", "malignant") == (0, "benign")
    assert importers.birads_confidence(4, "malignant") == (1, "malignant")
    assert importers.birads_confidence(4, "benign") == (0, "malignant")
    assert importers.birads_confidence(4, "malignant", birads4_uncertain=True)[0] == 0
    assert importers.birads_confidence("4b", "malignant")[0] == 0 and importers.birads_confidence("4C", "malignant")[0] == 1
    assert importers.birads_confidence("BI-RADS 5", "malignant")[0] == 1
    with pytest.raises(SampleError, match="BI-RADS"):
        importers.birads_confidence("0", "benign")


def test_import_bus_bra_real_copy(real_data):
    BUS_BRA = real_data("bus_bra")
    samples, report = importers.import_bus_bra(BUS_BRA, limit=30)
    assert len(samples) == report.n_ok == 30 and not report.problems
    assert report.notes and all(why == "image not in this copy" for _, why in report.notes)
    for s in samples:
        w, h = s.image_size
        x1, y1, x2, y2 = s.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert (BUS_BRA / s.image_path).exists() and s.attribute == "margin"
        assert s.meta["pathology"] in ("benign", "malignant") and s.meta["kfold"] in (1, 2, 3)
    assert {s.c for s in samples} == {0, 1}
    assert {s.label for s in samples} == {"Circumscribed", "Not circumscribed"}
    first = samples[0]  # bus_0001-l: BBOX [91,24,103,79] (1-based x, y) ~ mask box
    assert first.id == "bus_0001-l" and first.box[:2] == (90.0, 23.0)
    fold3, _ = importers.import_bus_bra(BUS_BRA, limit=5, folds=[3])
    assert [s.meta["kfold"] for s in fold3] == [3] * 5


# ----------------------------------------------------------------------------- export and synthetic splits

def test_export_samples_keeps_other_splits(busi, tmp_path, monkeypatch):
    samples, _ = importers.import_busi(busi)
    out = tmp_path / "out"
    store.export_samples(samples[:1], busi, out, "real_a", TINY)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "real_a" in p.name}
    info = store.export_samples(samples[1:], busi, out, "real_b", TINY)
    assert set(info["splits"]) == {"real_a", "real_b"} and info["splits"]["real_b"]["count"] == 1
    assert all(p.read_bytes() == b for p, b in before.items())  # the other split's files untouched
    for split, src in (("real_a", samples[:1]), ("real_b", samples[1:])):
        loaded = store.load_split(out, split)
        assert [(s.id, s.box, s.label, s.c) for s in loaded] == [(s.id, s.box, s.label, s.c) for s in src]
        for s in loaded:
            assert (out / s.image_path).exists() and (out / s.meta["crop_path"]).exists() and s.question
            msize = model_input_size(*s.image_size, TINY.model.min_pixels, TINY.model.max_pixels)
            (rec,) = [r for r in store.load_dialogues(out, split) if r["id"] == s.id]
            assert parse_dialogue(rec["messages"], msize, s.image_size, s.attribute)[1] == s.label
    assert {r.split(",")[0] for r in (out / "samples.csv").read_text().splitlines()[1:]} == {"real_a", "real_b"}
    with pytest.raises(SampleError, match="already belong to split 'real_a'"):
        store.export_samples(samples[:1], busi, out, "real_c", TINY)
    # a crash while writing a split leaves the tables as they were and no temp files
    tables = {n: (out / n).read_bytes() for n in ("samples.csv", "splits.json")}
    monkeypatch.setattr(store, "crop_image", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.export_samples(samples[1:], busi, out, "real_b", TINY)
    assert tables == {n: (out / n).read_bytes() for n in tables}
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("synA"), tmp_path_factory.mktemp("synB")
    return store.build_synthetic_splits(TINY, a, progress=False), a, store.build_synthetic_splits(TINY, b, progress=False), b


def test_synthetic_splits_files_and_counts(synth_dirs):
    info, a, _, _ = synth_dirs
    splits = info["splits"]
    assert {k: v["count"] for k, v in splits.items()} == {"train": 12, "test_liver": 3, "test_breast": 3,
                                                          "test_thyroid": 3}
    assert {k.removeprefix("test_") for k in splits if k != "train"} == set(synth.ORGAN_PRESETS)   # one test split per organ
    assert set(splits["train"]["attributes"]) == set(TINY.data.attributes)
    assert max(splits["train"]["attributes"].values()) - min(splits["train"]["attributes"].values()) <= 2
    for split in splits:
        for name in (f"samples_{split}.jsonl", f"dialogues_{split}.jsonl", f"dialogues_single_{split}.jsonl"):
            assert (a / name).exists()
        samples = store.load_split(a, split)
        assert [s.id for s in samples] == splits[split]["ids"] and all(s.split == split for s in samples)
        for s, rec in zip(samples, store.load_dialogues(a, split)):
            assert rec["id"] == s.id and (a / s.image_path).exists() and (a / s.meta["crop_path"]).exists()
            assert Image.open(a / s.image_path).size == s.image_size == (TINY.data.image_size,) * 2
            msize = model_input_size(*s.image_size, TINY.model.min_pixels, TINY.model.max_pixels)
            box, label = parse_dialogue(rec["messages"], msize, s.image_size, s.attribute)
            assert label == s.label and max(abs(p - q) for p, q in zip(box, s.box)) <= 0.5 * 256 / msize[0] + 1e-6
            assert rec["messages"][0]["content"][0]["image"] == s.image_path
    rows = (a / "samples.csv").read_text().splitlines()
    assert len(rows) == 1 + 21 and rows[0].startswith("split,id,")
    assert not [p for p in a.rglob("*") if ".tmp" in p.name]


def test_synthetic_splits_disjoint_and_deterministic(synth_dirs):
    info, a, info_b, b = synth_dirs
    train = set(info["splits"]["train"]["ids"])
    tests = [i for k, v in info["splits"].items() if k != "train" for i in v["ids"]]
    assert not train & set(tests) and len(set(tests)) == len(tests)
    train_pixels = {Image.open(a / "images" / f"{i}.png").tobytes() for i in train}
    assert not any(Image.open(a / "images" / f"{i}.png").tobytes() in train_pixels for i in tests)
    assert info == info_b
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in files_a)


# ----------------------------------------------------------------------------- a hostile manifest

def _hostile_root(tmp_path):
    """Good images in five encodings and bad files of every kind, side by side under one root."""
    root = tmp_path / "hostile"
    save_gray(root / "img" / "gray.png")
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 150, 128
    Image.fromarray(rgba, "RGBA").save(root / "img" / "rgba.png")
    Image.fromarray((np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) * 13)).save(root / "img" / "g16.png")
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(root / "img" / "good.jpg", quality=90)
    Image.fromarray(np.full((60, 80), 3, np.uint8)).convert("P").save(root / "img" / "palette.png")
    png = (root / "img" / "gray.png").read_bytes()
    jpg = (root / "img" / "good.jpg").read_bytes()
    (root / "img" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "img" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "img" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 3)
    (root / "img" / "empty.png").write_bytes(b"")
    (root / "img" / "adir.png").mkdir()
    save_gray(tmp_path / "outside.png")
    (root / "img" / "link.png").symlink_to(tmp_path / "outside.png")
    return root


# the path check is lexical: a symlink under the root is followed by design (datasets often link to shared storage)
GOOD_IMAGES = ["img/gray.png", "img/rgba.png", "img/g16.png", "img/good.jpg", "img/palette.png", "img/link.png"]
HOSTILE = [  # (field overrides, words expected in the problem)
    (dict(image="img/missing.png"), "missing"),
    (dict(image="img/truncated.png"), "cannot read image"),
    (dict(image="img/truncated.jpg"), "cannot read image"),
    (dict(image="img/garbage.jpg"), "cannot read image"),
    (dict(image="img/empty.png"), "cannot read image"),
    (dict(image="img/adir.png"), "cannot read image"),
    (dict(image="../outside.png"), "escapes the dataset root"),
    (dict(box=[5, 6, 90, 30]), "outside"),
    (dict(box=[-5, 6, 30, 30]), "outside"),
    (dict(box=[5, 6, 5, 30]), "zero"),
    (dict(box=[5, 6, "NaN", 30]), "box"),
    (dict(box="five"), "box"),
    (dict(label="purple"), "unknown echo label"),
    (dict(attribute="colour"), "attribute"),
    (dict(id="gray0"), "duplicate id"),
]


def test_hostile_manifest_reports_each_bad_record_and_keeps_the_good(tmp_path):
    root = _hostile_root(tmp_path)
    rows = [dict(GOOD, id=f"gray{i}" if i == 0 else Path(p).stem, image=p) for i, p in enumerate(GOOD_IMAGES)]
    bad_rows = [dict(dict(GOOD, id=f"bad{i}", image="img/gray.png"), **over) for i, (over, _) in enumerate(HOSTILE)]
    lines = [json.dumps(r) for r in rows[:2]] + [json.dumps(r) for r in bad_rows[:7]] + ["{not json", ""] \
        + [json.dumps(r) for r in rows[2:]] + [json.dumps(r) for r in bad_rows[7:]]
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(SampleError, match="line 3") as strict:  # strict: one error naming every bad record
        importers.import_manifest(path)
    assert len(strict.value.problems) == len(HOSTILE) + 1 and "line 10" in str(strict.value)
    samples, report = importers.import_manifest(path, strict=False)
    assert sorted(s.id for s in samples) == sorted(r["id"] for r in rows)
    assert report.n_ok == len(GOOD_IMAGES)
    problems = dict(report.problems)
    n_bad = len(HOSTILE) + 1  # + the line that is not JSON
    assert len(problems) == n_bad, report.problems
    for row, (_, words) in zip(bad_rows, HOSTILE):
        hits = [p for rec, p in problems.items() if f"id={row['id']!r}" in rec and row["image"] in rec]
        assert hits and words in hits[-1], (row, problems)
    assert any("line 10" in rec for rec in problems)  # the broken JSON line, by number

    # the good ones export as 8-bit RGB PNGs, and a second export beside them loses nothing
    out = tmp_path / "out"
    store.export_samples(samples, root, out, "real_hostile", TINY)
    for s in samples:
        im = Image.open(out / "images" / f"{s.id}.png")
        assert im.mode == "RGB" and im.size == (80, 60)
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    with pytest.raises(SampleError, match="already belong to split 'real_hostile'"):
        store.export_samples(samples[:1], root, out, "real_other", TINY)
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before
    assert len(store.load_split(out, "real_hostile")) == len(GOOD_IMAGES)


# ------------------------------------------------------------------ real label vocabularies

BIRADS_MARGINS = ["Circumscribed", "Not circumscribed - indistinct", "not circumscribed - angular",
                  "Not circumscribed – microlobulated, spiculated", "Not circumscribed - indistinct/angular/spiculated",
                  "spiculated", "heterogeneous", "complex cystic/solid", "not applicable", "heterogeneous"]


def _manifest(root, labels, attribute="margin", extra=None):
    save_gray(root / "img.png")
    rows = [dict(id=f"r{i}", image="img.png", box=[5, 5, 40, 40], attribute=attribute, label=lab, c=1, **(extra or {}))
            for i, lab in enumerate(labels)]
    path = root / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_birads_subtypes_map_to_their_parent_and_orphans_are_counted(tmp_path):
    samples, report = importers.import_manifest(_manifest(tmp_path, BIRADS_MARGINS), strict=False)
    assert [s.label for s in samples] == ["Circumscribed"] + ["Not circumscribed"] * 5
    assert report.unknown_labels == {("margin", "heterogeneous"): 2, ("margin", "complex cystic/solid"): 1,
                                     ("margin", "not applicable"): 1}
    assert report.label_rows()[0] == dict(attribute="margin", label="heterogeneous", count=2)
    assert "'heterogeneous' x2" in report.summary() and len(report.problems) == 4
    with pytest.raises(SampleError, match="unknown margin label 'heterogeneous'"):
        importers.import_manifest(_manifest(tmp_path / "strict", ["heterogeneous"]))


def test_manifest_label_map_applies_before_the_vocabulary(tmp_path):
    path = _manifest(tmp_path, ["benign", "MALIGNANT", "Circumscribed", "weird"])
    samples, report = importers.import_manifest(path, strict=False, label_map=importers.MARGIN_PROXY)
    assert [s.label for s in samples] == ["Circumscribed", "Not circumscribed", "Circumscribed"]
    assert dict(report.unknown_labels) == {("margin", "weird"): 1}
    # rater labels go through the same map; c follows their agreement
    raters = _manifest(tmp_path / "r", ["benign"], extra=dict(rater_a="benign", rater_b="malignant"))
    rows = [dict(json.loads(raters.read_text()), c="")]
    raters.write_text(json.dumps(rows[0]) + "\n")
    (s,), _ = importers.import_manifest(raters, label_map=importers.MARGIN_PROXY)
    assert s.c == 0 and s.rater_labels == ("Circumscribed", "Not circumscribed") and s.label == "Circumscribed"
    (lim,), _ = importers.import_manifest(path, strict=False, label_map=importers.MARGIN_PROXY, limit=1)
    assert lim.id == "r0"


# ------------------------------------------------------------------ real splits through the chain's data step

def test_real_splits_busi_and_manifest_become_test_splits(tmp_path, busi, monkeypatch):
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path))
    _manifest(tmp_path / "mine", ["Not circumscribed - spiculated", "heterogeneous", "circumscribed"])
    specs = [{"name": "busi", "importer": "busi", "path": "busi"},
             {"name": "mine", "importer": "manifest", "path": "mine/cases.jsonl", "organ": "breast"}]
    out = tmp_path / "run_data"
    result = store.import_real_splits(specs, out, TINY)
    assert result["busi"]["summary"] == dict(n=2, c0_rate=0.0, bad_records=0, skipped_by_design=1)
    mine = result["mine"]["summary"]
    assert mine["n"] == 2 and mine["bad_records"] == 1
    assert mine["unknown_labels"] == [dict(attribute="margin", label="heterogeneous", count=1)]
    assert store.test_splits(out) == ["test_busi", "test_mine"]
    assert [s.label for s in store.load_split(out, "test_mine")] == ["Not circumscribed", "Circumscribed"]
    assert all(s.organ == "breast" for s in store.load_split(out, "test_mine"))


def test_real_split_missing_skips_without_the_variable_and_fails_with_it(tmp_path, monkeypatch):
    spec = [{"name": "busbra", "importer": "bus_bra", "path": "bus_bra"}]
    monkeypatch.delenv("ZOOMDX_DATA", raising=False)
    monkeypatch.setattr("zoomdx_lib.config.REPO_ROOT", tmp_path)   # the default data/ folder: empty
    result = store.import_real_splits(spec, tmp_path / "out", TINY)
    assert "not found" in result["busbra"]["summary"]["skipped"] and result["busbra"]["report"] is None
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="bus_bra data set 'busbra' not found"):
        store.import_real_splits(spec, tmp_path / "out", TINY)
    with pytest.raises(ValueError, match="unknown importer"):
        store.import_real_splits([{"name": "x", "importer": "dicom", "path": "x"}], tmp_path / "out", TINY)

"""Synthetic against real B-mode statistics: each number is what it says, the table is the median of the rows."""
import numpy as np
import pytest
from PIL import Image

from zoomdx_lib.eval import realism as RE
from zoomdx_lib.schema import Sample


def _case(lesion_grey: float, box=(40, 60, 100, 90), size=160, seed=0):
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(100, 10, (size, size)), 1, 255)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = np.clip(rng.normal(lesion_grey, 3, (y2 - y1, x2 - x1)), 0, 255)
    s = Sample(id=f"c{seed}", image_path="x", box=tuple(map(float, box)), attribute="echo", label="Hypoechoic", c=1,
               organ="breast", question="q", image_size=(size, size), meta={"true_attributes": {"echo": "Hypoechoic"}})
    return s, Image.fromarray(a.astype(np.uint8), mode="L")


def test_contrast_size_and_aspect_of_a_known_lesion():
    s, img = _case(25.0)
    row = RE.image_stats(s, img, RE.synthetic_group(s))
    assert row["group"] == "Hypoechoic"
    assert row["contrast_db"] == pytest.approx(20 * np.log10(25 / 100), abs=0.3)
    assert row["size_rel"] == pytest.approx(np.sqrt(60 * 30) / 160)
    assert row["aspect"] == pytest.approx(30 / 60)
    assert 90 < row["grey_mean"] < 110 and 5 < row["grey_std"] < 15    # patches avoid the lesion


def test_the_band_ignores_the_black_outside_the_scan():
    s, img = _case(50.0)
    a = np.asarray(img).copy()
    a[:, :30] = 0                                                   # outside the fan, next to the lesion
    with_black = RE.image_stats(s, Image.fromarray(a), fan_masked=True)["contrast_db"]
    assert with_black == pytest.approx(20 * np.log10(50 / 100), abs=0.3)


def test_table_is_the_median_of_the_rows_with_an_interval_and_groups():
    items = [_case(g, seed=k) for k, g in enumerate([20, 30, 40, 50, 60, 70])]
    df = RE.source_stats(items, RE.synthetic_group)
    table = RE.realism_table({"toy": df}, n_boot=200)
    for stat in RE.STATS:
        row = table[(table.statistic == stat) & (table.group == "all")].iloc[0]
        assert row["median"] == pytest.approx(float(np.median(df[stat].dropna())))
        assert row["low"] <= row["median"] <= row["high"] and row["n"] == df[stat].notna().sum()
    assert set(table[table.statistic == "contrast_db"].group) == {"all", "Hypoechoic"}
    wide = RE.realism_wide(table)
    assert list(wide.columns) == ["toy"] and wide.loc[("aspect", "all"), "toy"].startswith("0.5 [")


def test_a_missing_reference_is_skipped_unless_the_data_is_promised(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOOMDX_DATA", raising=False)
    out = RE.realism_comparison(f"bus_bra:{tmp_path / 'nowhere'}", [1, 2], 4, n_boot=50)
    assert "not found" in out["skipped"] and list(out["examples"]) == ["synthetic breast"]
    assert set(out["table"].source) == {"synthetic breast"}
    monkeypatch.setenv("ZOOMDX_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RE.realism_comparison(f"bus_bra:{tmp_path / 'nowhere'}", [1, 2], 4, n_boot=50)

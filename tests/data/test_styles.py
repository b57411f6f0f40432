"""Imaging styles (zoomdx_lib.data.synth.STYLES): the default is the generator unchanged (the golden digests in
test_synth_golden.py pin it), and the bus_bra style moves each statistic notebook 01 measures towards BUS-BRA's
breast train folds (the reference medians in docs/base.md), on fresh cases."""
import numpy as np
import pandas as pd
import pytest

from zoomdx_lib.config import PretrainConfig
from zoomdx_lib.data.synth import STYLES, generate_case, generate_samples, styled_preset
from zoomdx_lib.eval import realism as RE
from zoomdx_lib.train.pretrain import pretrain, stream_case

# BUS-BRA folds 1-2, 160 images (docs/base.md): grey mean, grey spread, grain axial / lateral, lesion size
BUS_BRA = dict(grey_mean=62.0, grey_std=16.1, axial_rel=0.0155, lateral_rel=0.0446, size_rel=0.34)


def _medians(style: str, n: int = 24) -> pd.Series:
    items = list(generate_samples("breast", n, seed=4242, split="t", style=style))
    return RE.source_stats(items, RE.synthetic_group).median(numeric_only=True)


def test_bus_bra_style_is_closer_to_bus_bra_on_every_statistic_it_changes():
    default, styled = _medians("default"), _medians("bus_bra")
    for stat, target in BUS_BRA.items():
        before, after = abs(default[stat] - target) / target, abs(styled[stat] - target) / target
        assert after < 0.25 and after < before / 2, (stat, default[stat], styled[stat], target)


def test_a_style_keeps_the_case_and_changes_only_its_imaging():
    a, b = generate_case(3, "breast"), generate_case(3, "breast", style="bus_bra")
    assert a.attributes == b.attributes and a.latent["echo_db"] == b.latent["echo_db"]
    assert not np.array_equal(a.image, b.image)
    assert (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]) > (a.box[2] - a.box[0]) * (a.box[3] - a.box[1])
    assert generate_case(3, "breast", style="default").image.tobytes() == a.image.tobytes()
    assert b.meta["style"] == "bus_bra"


def test_styled_samples_say_so_and_unknown_styles_are_refused():
    sample, _ = next(generate_samples("breast", 1, seed=1, style="bus_bra"))
    assert sample.meta["style"] == "bus_bra"
    assert "style" not in next(generate_samples("breast", 1, seed=1))[0].meta
    with pytest.raises(ValueError, match="unknown imaging style 'bmode'"):
        styled_preset("breast", "bmode")
    with pytest.raises(ValueError, match="unknown imaging style"):
        next(generate_samples("breast", 1, seed=1, style="nope"))


def test_pretraining_styles_only_the_styles_organs(tmp_path):
    cfg = PretrainConfig(synth_style="bus_bra")
    assert STYLES["bus_bra"]["organs"] == ("breast",)
    liver, breast = stream_case(cfg, 0)[0], stream_case(cfg, 1)[0]
    assert liver.organ == "liver" and "style" not in liver.meta
    assert breast.organ == "breast" and breast.meta["style"] == "bus_bra"
    plain = stream_case(PretrainConfig(), 1)[0]
    assert plain.attribute == breast.attribute and plain.label == breast.label and plain.box != breast.box
    with pytest.raises(ValueError, match="unknown imaging style"):
        pretrain(PretrainConfig(synth_style="typo"), tmp_path)


def test_the_model_card_names_the_style():
    from zoomdx_lib.workbook.base import _stage_data
    assert "synthetic breast cases imaged in the 'bus_bra' style" in _stage_data(PretrainConfig(synth_style="bus_bra"))
    assert "style" not in _stage_data(PretrainConfig())

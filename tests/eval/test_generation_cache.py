"""The generation cache is reused only for the same weights and settings: a retrained adapter, another base or a
changed setting regenerates instead of returning stale records."""
import json

import pytest

from zoomdx_lib.eval import generate as G
from zoomdx_lib.eval.generate import Method, cache_path, cached_records


class Sample:
    def __init__(self, i):
        self.id = f"s{i}"


@pytest.fixture
def counting(monkeypatch):
    """Replace the generator with one that records each call and stamps records with the call number."""
    calls = []

    def fake_generate(method, model, processor, items, mode, seed, **kw):
        calls.append(kw)
        return [dict(id=s.id, call=len(calls)) for s, _ in items]
    monkeypatch.setattr(G, "generate_records", fake_generate)
    return calls


def test_cache_hits_only_for_the_same_weights_and_settings(tmp_path, counting):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"base weights")
    (adapter / "adapter_model.safetensors").write_bytes(b"lora v1")
    method = Method("zoom_sft", "zoom", str(base), str(adapter))
    items = [(Sample(i), None) for i in range(3)]
    settings = dict(group_size=8, temperature=0.7, max_new_tokens=(48, 24), crop_pixels=12544, batch_size=16)

    def get(m=method, **over):
        return cached_records(tmp_path / "gen", m, "test_liver", items, "sample", 0, lambda: (None, None),
                              **{**settings, **over})

    assert get()[0]["call"] == 1
    assert get()[0]["call"] == 1 and len(counting) == 1                 # same weights and settings: cached
    assert get(batch_size=4)[0]["call"] == 1                              # batch size only groups the work
    (adapter / "adapter_model.safetensors").write_bytes(b"lora v2")     # the adapter was retrained
    assert get()[0]["call"] == 2
    assert get(temperature=1.0)[0]["call"] == 3                           # another setting
    (base / "model.safetensors").write_bytes(b"another base")
    assert get()[0]["call"] == 4
    assert get()[0]["call"] == 4 and len(counting) == 4
    meta = json.loads(cache_path(tmp_path / "gen", "zoom_sft", "test_liver", "sample", 0)
                      .with_suffix(".meta.json").read_text())
    assert meta["adapter"] == str(adapter) and len(meta["fingerprint"]) == 64


def test_records_without_a_fingerprint_are_regenerated(tmp_path, counting):
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"w")
    path = cache_path(tmp_path / "gen", "m", "d", "greedy", 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"id": "s0", "call": 0}) + "\n")            # written by an older version
    recs = cached_records(tmp_path / "gen", Method("m", "zoom", str(base)), "d", [(Sample(0), None)], "greedy", 0,
                          lambda: (None, None), group_size=8)
    assert recs[0]["call"] == 1


def test_a_folder_with_checksums_is_identified_by_them(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"w")
    (tmp_path / "checksums.json").write_text(json.dumps({"model.safetensors": "abc"}))
    assert G._weights_identity(tmp_path) == [{"model.safetensors": "abc"}]

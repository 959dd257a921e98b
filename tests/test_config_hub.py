import time

import pytest

from instantportrait import hub
from instantportrait.config import MODELS, resolve_model
from instantportrait.errors import ModelNotAvailableError


def test_every_model_has_id_licence_and_size():
    for key, spec in MODELS.items():
        assert spec.key == key and spec.repo_id and spec.licence and spec.size_gb > 0
    assert MODELS["instructpix2pix"].repo_id == "timbrooks/instruct-pix2pix"
    assert MODELS["magicbrush"].repo_id == "vinesmsuic/magicbrush-jul7"
    assert "non-commercial" in MODELS["buffalo_l"].licence


def test_override_order(monkeypatch, tmp_path):
    assert resolve_model("ipnet").repo_id == MODELS["ipnet"].repo_id
    monkeypatch.setenv("INSTANTPORTRAIT_IPNET", "someone/ipnet@abc123")
    spec = resolve_model("ipnet")
    assert (spec.repo_id, spec.revision) == ("someone/ipnet", "abc123")
    spec = resolve_model("ipnet", str(tmp_path))  # argument beats environment
    assert spec.repo_id == str(tmp_path) and spec.is_local
    monkeypatch.setenv("INSTANTPORTRAIT_CLIP", "ViT-L/14@336px")
    assert resolve_model("clip").repo_id == "ViT-L/14@336px"


def test_unknown_key_needs_override():
    with pytest.raises(KeyError):
        resolve_model("nothing")
    assert resolve_model("nothing", "a/b").repo_id == "a/b"


def test_locate_local_folder_and_cache(tmp_path, monkeypatch):
    spec = resolve_model("ipnet", str(tmp_path))
    assert hub.locate(spec) == tmp_path
    # A repo laid out in the Hub cache format is found without network.
    cache = tmp_path / "cache"
    snap = cache / "models--someone--model" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text("{}")
    (cache / "models--someone--model" / "refs").mkdir()
    (cache / "models--someone--model" / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    spec = resolve_model("x", "someone/model")
    assert hub.locate(spec, cache_dir=cache) == snap


def test_offline_missing_fails_fast(monkeypatch, tmp_path):
    spec = resolve_model("magicbrush")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="vinesmsuic/magicbrush-jul7.*INSTANTPORTRAIT_MAGICBRUSH"):
        hub.locate(spec, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 2


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1:9")  # TEST-NET-1: never routed; the socket guard refuses
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        hub.locate(resolve_model("instructpix2pix"), cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 10


def test_model_card_sections():
    card = hub.model_card({"name": "Demo", "toy": True, "training": {"steps": 10}, "metrics": {"id_sim": 0.81234},
                           "base_model": "timbrooks/instruct-pix2pix"})
    assert card.splitlines()[0] == "---" and "base_model: timbrooks/instruct-pix2pix" in card
    for section in ("# Demo", "Toy model", "## Training recipe", "steps: 10", "| id_sim | 0.8123 |",
                    "## Intended use", "## Licence notes", "non-commercial"):
        assert section in card

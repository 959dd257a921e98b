"""ClipScorer on a tiny random CLIP (no network): score ranges, invariances, the differentiable path, offline errors."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from instantportrait.errors import ModelNotAvailableError
from instantportrait.eval.clip_score import ClipScorer, download_clip_weights, expected_clip_file, load_clip_state_dict
from instantportrait.tiny.clip import TINY_CLIP_EMBED_DIM, build_tiny_clip

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "INSTANTPORTRAIT_OFFLINE")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", seed=0)


@pytest.fixture(scope="module")
def scorer(tiny_path: Path) -> ClipScorer:
    return ClipScorer(weights=tiny_path).load()


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Real photos shipped with scikit-image, in several sizes and aspect ratios (some smaller than 32 px)."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())  # 512 x 512
    return [
        astronaut,
        astronaut.crop((40, 0, 472, 380)),  # landscape
        Image.fromarray(data.coffee()),  # 600 x 400
        Image.fromarray(data.chelsea()).transpose(Image.Transpose.ROTATE_90),  # portrait
        astronaut.resize((24, 20), Image.Resampling.BICUBIC),  # upscaled by the preprocessing
    ]


@pytest.fixture()
def no_offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("INSTANTPORTRAIT_CLIP", raising=False)


def _in_unit_range(x: torch.Tensor) -> bool:
    return bool(((x >= -1.0) & (x <= 1.0)).all())


# ---------------------------------------------------------------------------- the tiny checkpoint


def test_tiny_clip_file_is_small_seeded_and_clip_load_accepts_it(tiny_path: Path, tmp_path: Path) -> None:
    import clip

    assert tiny_path.stat().st_size < 10 * 2**20
    again = build_tiny_clip(tmp_path / "again.pt", seed=0)
    other = build_tiny_clip(tmp_path / "other.pt", seed=1)
    a, b, c = (load_clip_state_dict(p) for p in (tiny_path, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj"], c["visual.proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, preprocess = clip.load(str(tiny_path), device="cpu", jit=False)
    assert model.visual.input_resolution == 32
    assert model.vocab_size == 49408 and model.context_length == 77


def test_describe_and_lazy_loading(tiny_path: Path) -> None:
    s = ClipScorer(weights=tiny_path)
    assert not s.is_loaded
    info = s.describe()  # loads
    assert s.is_loaded
    assert info["weights"] == tiny_path.name and info["variant"] is None
    assert info["sha256"] == hashlib.sha256(tiny_path.read_bytes()).hexdigest()[:16]
    assert info["input_resolution"] == 32 and info["embed_dim"] == TINY_CLIP_EMBED_DIM
    assert info["architecture"] == "ViT" and info["dtype"] == "float32"
    s.unload()
    assert not s.is_loaded
    assert s.image_features([Image.new("RGB", (8, 8))]).shape == (1, TINY_CLIP_EMBED_DIM)  # reloads on use
    assert all(not p.requires_grad for p in s.model.parameters())


def test_safetensors_and_torchscript_files_give_the_same_features(scorer: ClipScorer, tiny_path: Path,
                                                                  tmp_path: Path, images: list[Image.Image]) -> None:
    import clip
    from safetensors.torch import save_file

    state = load_clip_state_dict(tiny_path)
    save_file(state, str(tmp_path / "tiny.safetensors"))
    # An OpenAI-style TorchScript archive (what clip downloads): loaded through torch.jit.load, tensors only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = clip.load(str(tiny_path), device="cpu", jit=False)
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), clip.tokenize(["a"])), check_trace=False)
        traced.save(str(tmp_path / "tiny_jit.pt"))
    ref = scorer.image_features(images[:2])
    for path in (tmp_path / "tiny.safetensors", tmp_path / "tiny_jit.pt"):
        other = ClipScorer(weights=path)
        torch.testing.assert_close(other.image_features(images[:2]), ref, rtol=0, atol=1e-6)


def test_env_var_selects_a_local_file(monkeypatch: pytest.MonkeyPatch, tiny_path: Path) -> None:
    monkeypatch.setenv("INSTANTPORTRAIT_CLIP", str(tiny_path))
    s = ClipScorer()
    assert s.weights == tiny_path and s.variant is None
    assert s.embed_dim == TINY_CLIP_EMBED_DIM


def test_not_a_clip_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelNotAvailableError, match="not an OpenAI CLIP checkpoint"):
        ClipScorer(weights=path).load()
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        ClipScorer(weights=tmp_path / "missing.pt").load()


# ---------------------------------------------------------------------------- features and scores


def test_features_are_unit_vectors_for_any_image_mode(scorer: ClipScorer, images: list[Image.Image]) -> None:
    rgb = images[0]
    variants = [rgb.convert(mode) for mode in ("L", "RGBA", "P", "1", "CMYK")] + [np.asarray(rgb)]
    feats = scorer.image_features(variants)  # (6, D)
    assert feats.shape == (6, TINY_CLIP_EMBED_DIM) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(6), rtol=0, atol=1e-5)
    # Each mode is scored as its RGB conversion; a uint8 array as the image it holds.
    ref = scorer.image_features([im.convert("RGB") for im in variants[:-1]] + [rgb])
    torch.testing.assert_close(feats, ref, rtol=0, atol=1e-6)
    txt = scorer.text_features(["a portrait", "wearing glasses " * 40])  # the second is truncated, not an error
    assert txt.shape == (2, TINY_CLIP_EMBED_DIM)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    assert scorer.image_features([]).shape == (0, TINY_CLIP_EMBED_DIM)


def test_clip_i_of_identical_images_is_one(scorer: ClipScorer, images: list[Image.Image]) -> None:
    same = scorer.clip_i(images, [im.copy() for im in images])
    torch.testing.assert_close(same, torch.ones(len(images)), rtol=0, atol=1e-5)
    different = scorer.clip_i(images, images[::-1])
    assert different.shape == (len(images),) and _in_unit_range(different)
    assert different[0] < 1 - 1e-4  # astronaut vs its 24 x 20 thumbnail really differ
    with pytest.raises(ValueError, match="pairs"):
        scorer.clip_i(images, images[:2])


def test_clip_t_shape_and_values(scorer: ClipScorer, images: list[Image.Image]) -> None:
    texts = ["an astronaut", "a cropped portrait", "a cup of coffee", "a cat", "a tiny picture"]
    scores = scorer.clip_t(images, texts)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and _in_unit_range(scores)
    expected = (scorer.image_features(images) * scorer.text_features(texts)).sum(-1)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    broadcast = scorer.clip_t(images, "an astronaut")
    torch.testing.assert_close(broadcast[0], scores[0])
    assert scorer.clip_t(images[0], "an astronaut").shape == (1,)
    with pytest.raises(ValueError, match="texts"):
        scorer.clip_t(images, texts[:2])


def test_directional(scorer: ClipScorer, images: list[Image.Image]) -> None:
    src = images[:4]
    unchanged = scorer.directional(src, [im.copy() for im in src], "a person", "a person wearing glasses")
    assert torch.equal(unchanged, torch.zeros(4))
    edited = [images[1], images[2], images[3], images[0]]
    scores = scorer.directional(src, edited, ["a photo"] * 4, ["a cat", "a cup", "a dog", "a face"])
    assert scores.shape == (4,) and _in_unit_range(scores) and bool((scores != 0).all())
    same_text = scorer.directional(src, edited, "a photo", "a photo")
    assert torch.equal(same_text, torch.zeros(4))
    # By hand: cosine of the two embedding differences.
    d_img = scorer.image_features(edited) - scorer.image_features(src)
    d_txt = scorer.text_features(["a cat", "a cup", "a dog", "a face"]) - scorer.text_features(["a photo"] * 4)
    torch.testing.assert_close(scores, torch.nn.functional.cosine_similarity(d_img, d_txt), rtol=0, atol=1e-5)


def test_batch_invariance(scorer: ClipScorer, images: list[Image.Image]) -> None:
    texts = ["a", "an astronaut in a suit", "coffee", "a cat on a rug", "tiny"]
    whole = scorer.image_features(images, batch_size=64)
    one_by_one = torch.cat([scorer.image_features([im], batch_size=1) for im in images])
    torch.testing.assert_close(scorer.image_features(images, batch_size=2), whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(one_by_one, whole, rtol=0, atol=1e-5)
    t_whole = scorer.text_features(texts, batch_size=64)
    t_single = torch.cat([scorer.text_features(t) for t in texts])
    torch.testing.assert_close(t_single, t_whole, rtol=0, atol=1e-5)
    for fn, args in ((scorer.clip_t, (images, texts)), (scorer.clip_i, (images, images[::-1])),
                     (scorer.directional, (images, images[::-1], "a photo", texts))):
        torch.testing.assert_close(fn(*args, batch_size=1), fn(*args, batch_size=64), rtol=0, atol=1e-5)


def test_deterministic_across_instances(tiny_path: Path, images: list[Image.Image]) -> None:
    a, b = ClipScorer(weights=tiny_path), ClipScorer(weights=tiny_path)
    assert torch.equal(a.clip_t(images, "a face"), b.clip_t(images, "a face"))
    assert torch.equal(a.image_features(images), b.image_features(images))
    assert torch.equal(a.directional(images, images[::-1], "x", "y"), b.directional(images, images[::-1], "x", "y"))


def test_differentiable_path_matches_and_has_gradients(scorer: ClipScorer, images: list[Image.Image]) -> None:
    """The torch preprocessing tracks clip's PIL one; features agree far more closely than any two images do.

    Tolerances: PIL resamples in two passes and rounds/clamps its intermediate image to uint8, torch does not, so
    the [0, 1] pixels differ by ~1e-3 on average (0.25/255: uint8 rounding) and by at most a few /255 at sharp edges
    (we allow 0.04 ~ 10/255). On features that is 1 - cos < 1e-4, while the most similar pair of *different* images
    here sits at 1 - cos ~ 8e-3 with this random model.
    """
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    for im in images:
        pixels = TF.to_tensor(im)[None]  # (1, 3, H, W) in [0, 1]
        ref_px = scorer.preprocess([im])  # (1, 3, 32, 32), normalised
        got_px = scorer.preprocess_differentiable(pixels)
        diff = (got_px - ref_px) * std  # back to [0, 1] units
        assert got_px.shape == ref_px.shape
        assert diff.abs().mean() < 3e-3 and diff.abs().max() < 0.04, (im.size, diff.abs().mean(), diff.abs().max())
        cos = (scorer.image_features_differentiable(pixels) * scorer.image_features([im])).sum().item()
        assert cos > 1 - 1e-4, (im.size, cos)
    feats = scorer.image_features(images)
    cross = feats @ feats.T - 2 * torch.eye(len(images))
    assert cross.max() < 1 - 5e-3  # the scale the tolerance above is small against

    pixels = torch.stack([TF.to_tensor(im.resize((48, 40))) for im in images[:3]])  # (3, 3, 40, 48)
    pixels.requires_grad_(True)
    target = scorer.text_features(["a person wearing glasses"])  # (1, D)
    feats = scorer.image_features_differentiable(pixels)  # (3, D)
    assert feats.shape == (3, TINY_CLIP_EMBED_DIM) and feats.requires_grad
    (1 - feats @ target.T).sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        scorer.image_features_differentiable(pixels[0])


# ---------------------------------------------------------------------------- offline behaviour and downloads


@pytest.mark.parametrize("variant", ["ViT-L/14", "ViT-L/14@336px"])
def test_missing_variant_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_offline_env: None,
                                            variant: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("INSTANTPORTRAIT_OFFLINE", "1")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download offline")

    monkeypatch.setattr("instantportrait.eval.clip_score.download_clip_weights", no_download)
    root = tmp_path / "empty"
    start = time.perf_counter()
    s = ClipScorer(variant, download_root=root)
    with pytest.raises(ModelNotAvailableError) as info:
        s.image_features([Image.new("RGB", (8, 8))])
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    expected = expected_clip_file(variant, root)
    assert variant in message and str(expected) in message and "INSTANTPORTRAIT_CLIP" in message
    assert not root.exists() or not any(root.iterdir())


def test_unreachable_host_fails_fast_without_downloading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         no_offline_env: None) -> None:
    probed: list[str] = []
    monkeypatch.setattr("instantportrait.hub.locating.hub_reachable",
                        lambda endpoint=None, **kw: probed.append(endpoint))
    monkeypatch.setattr("instantportrait.eval.clip_score.download_clip_weights",
                        lambda *a, **k: pytest.fail("must not download when unreachable"))
    with pytest.raises(ModelNotAvailableError, match="openaipublic.azureedge.net cannot be reached"):
        ClipScorer("ViT-B/32", download_root=tmp_path).load()
    assert probed == ["https://openaipublic.azureedge.net"]


def test_unknown_variant_is_rejected_at_construction(no_offline_env: None) -> None:
    with pytest.raises(ModelNotAvailableError, match="ViT-Z/99"):
        ClipScorer("ViT-Z/99")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        ClipScorer("/nonexistent/clip.pt")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture()
def local_server(tmp_path: Path, tiny_path: Path):
    """A localhost HTTP server laid out like openaipublic: /<sha256>/<name>.pt (plus a copy under a wrong hash)."""
    served = tmp_path / "served"
    digest = hashlib.sha256(tiny_path.read_bytes()).hexdigest()
    for folder in (digest, "0" * 64):
        (served / folder).mkdir(parents=True)
        shutil.copy(tiny_path, served / folder / "Tiny-8.pt")

    def handler(*args: object, **kwargs: object) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(served), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, digest
    server.shutdown()
    server.server_close()


def test_download_verifies_the_checksum(local_server: tuple[str, str], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, no_offline_env: None,
                                        images: list[Image.Image], scorer: ClipScorer) -> None:
    import clip

    base, digest = local_server
    root = tmp_path / "cache"
    with pytest.raises(ModelNotAvailableError, match="does not match"):
        download_clip_weights(f"{base}/{'0' * 64}/Tiny-8.pt", root, timeout=5)
    assert not any(root.iterdir())  # no partial or bad file left behind

    monkeypatch.setitem(clip.clip._MODELS, "Tiny/8", f"{base}/{digest}/Tiny-8.pt")
    s = ClipScorer("Tiny/8", download_root=root)
    torch.testing.assert_close(s.image_features(images), scorer.image_features(images), rtol=0, atol=1e-6)
    assert sorted(p.name for p in root.iterdir()) == ["Tiny-8.pt"]
    assert s.describe()["variant"] == "Tiny/8" and s.describe()["sha256"] == digest[:16]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now cached: offline is fine
    assert ClipScorer("Tiny/8", download_root=root).load().is_loaded
    (root / "Tiny-8.pt").write_bytes(b"truncated")
    with pytest.raises(ModelNotAvailableError, match="corrupt"):
        ClipScorer("Tiny/8", download_root=root).load()

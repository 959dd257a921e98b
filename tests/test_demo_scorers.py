"""The offline demo scorers (``instantportrait/demo/models/face_pack`` and ``clip/``) and their trainer.

The shipped files must load through the same code paths as the real models (``FaceEncoder``, ``ClipScorer``) and
measure the synthetic world sensibly on people never seen in training; ``--quick`` training must produce loadable
files; the SCRFD-layout wrapper must hand insightface exactly the boxes and landmarks the network predicts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from instantportrait.demo import World
from train import train_scorers as ts
from train.scorers.face import _det_targets

DEMO = Path(__file__).resolve().parents[1] / "instantportrait" / "demo" / "models"
PACK = DEMO / ts.FACE_PACK_DIR
CLIP_PATH = DEMO / ts.CLIP_DIR / ts.CLIP_FILE
N_TEST = 20




@pytest.fixture(scope="module")
def world() -> World:
    return World(0, 200)  # the demo world the scorers were trained on (train split only)


@pytest.fixture(scope="module")
def test_samples(world):
    return list(world.samples("test", N_TEST))


@pytest.fixture(scope="module")
def encoder():
    from instantportrait.face.encoder import FaceEncoder

    assert (PACK / ts.DET_FILE).is_file() and (PACK / ts.REC_FILE).is_file(), \
        f"the demo face pack is missing; build it with `python -m train.train_scorers --out {DEMO}`"
    return FaceEncoder(PACK).load()


@pytest.fixture(scope="module")
def scorer():
    from instantportrait.eval.clip_score import ClipScorer

    assert CLIP_PATH.is_file(), f"the demo CLIP is missing; build it with `python -m train.train_scorers --out {DEMO}`"
    return ClipScorer(weights=CLIP_PATH).load()


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------------------------------------- shipped face pack
def test_shipped_pack_routes_to_detector_and_recogniser(encoder):
    info = encoder.describe()
    assert info["detection_model"] == ts.DET_FILE
    assert info["recognition_model"] == ts.REC_FILE
    assert info["embedding_dim"] == ts.ScorerConfig().rec_dim
    sizes = [p.stat().st_size for p in PACK.glob("*.onnx")]
    assert len(sizes) == 2 and sum(sizes) < 8e6


def test_shipped_pack_finds_held_out_faces_with_landmarks(encoder, test_samples):
    hits, errors = 0, []
    for s in test_samples:
        for image in (s.source, s.target):
            faces = encoder.detect(image)
            if faces and _iou(faces[0].bbox, s.bbox) >= 0.5:
                hits += 1
                errors.append(np.linalg.norm(faces[0].kps - np.asarray(s.kps), axis=1).mean())
    assert hits >= 0.95 * 2 * len(test_samples)
    assert np.mean(errors) < 3.0  # pixels in a 128-px image (the eyes are ~20 px apart)


@pytest.mark.parametrize("det_size", [128, 320])
def test_shipped_pack_works_at_other_det_sizes_and_image_sizes(encoder, test_samples, det_size):
    from instantportrait.face.encoder import FaceEncoder

    enc = FaceEncoder(PACK, det_size=(det_size, det_size)).load()
    s = test_samples[0]
    big = s.source.resize((384, 384))
    for image, scale in ((s.source, 1.0), (big, 3.0)):
        faces = enc.detect(image)
        assert faces and _iou(faces[0].bbox / scale, s.bbox) >= 0.5
    ref = encoder.encode(s.source)
    assert enc.cosine(ref, enc.encode(big)) > 0.8  # same picture at another size: same person


def test_shipped_pack_finds_nothing_on_blank_images(encoder):
    for image in ts.blank_images(8, seed=1):
        assert encoder.detect(image) == []


def test_shipped_pack_separates_held_out_identities(encoder, test_samples):
    results = [(s.identity_id, encoder.encode(s.source), encoder.encode(s.target)) for s in test_samples]
    same = [encoder.cosine(a, b) for _, a, b in results]  # a source and its edited target
    different = [encoder.cosine(a, b) for i, (pa, a, _) in enumerate(results) for pb, b, _ in results[i + 1:]
                 if pa != pb]
    assert np.mean(same) >= 0.6
    assert np.mean(different) < 0.4
    assert np.mean(same) - np.mean(different) > 0.4


# ---------------------------------------------------------------------------------------------- shipped CLIP
def test_shipped_clip_is_a_small_vit(scorer):
    info = scorer.describe()
    assert info["architecture"] == "ViT" and info["input_resolution"] == ts.ScorerConfig().clip_resolution
    assert info["context_length"] == 77
    assert CLIP_PATH.stat().st_size < 10e6


def test_shipped_clip_ranks_edited_above_unedited(scorer, test_samples):
    texts = scorer.text_features([s.target_caption for s in test_samples])  # (n, D)
    src = scorer.image_features([s.source for s in test_samples])
    tgt = scorer.image_features([s.target for s in test_samples])
    above = ((tgt * texts).sum(1) > (src * texts).sum(1)).float().mean().item()
    assert above >= 0.7
    # and the same ranking through the public per-pair API the benchmark uses
    s = test_samples[0]
    assert scorer.clip_t(s.target, s.target_caption).shape == scorer.clip_t(s.source, s.target_caption).shape


# ---------------------------------------------------------------------------------------------- building blocks
def test_arcface_crop_is_insightfaces_norm_crop(test_samples):
    from insightface.utils import face_align

    s = test_samples[1]
    image, kps = np.asarray(s.target), np.asarray(s.kps, np.float32)
    ours = ts.arcface_crop(image, kps)
    theirs = face_align.norm_crop(image, landmark=kps, image_size=112)
    assert ours.shape == (112, 112, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_det_targets_decode_back_to_the_box():
    bbox = np.array([20.0, 14.0, 62.0, 70.0], np.float32)
    kps = np.array([[32, 36], [50, 36], [41, 46], [34, 56], [48, 56]], np.float32)
    presence, central, box, kp = _det_targets(bbox, kps, 96)
    assert presence.shape == central.shape == (12, 12) and presence.sum() >= 4
    i, j = np.unravel_index(central.argmax(), central.shape)
    assert presence[i, j] == central[i, j] == 1.0 and (i, j) == (5, 5)  # the cell holding the centre (41, 42)
    assert central[presence == 0].max() < 0.2  # centrality falls off outside the face's middle
    c = (np.arange(12) + 0.5) * 8 - 0.5
    decoded = [c[j] - box[0, i, j] * 8, c[i] - box[1, i, j] * 8, c[j] + box[2, i, j] * 8, c[i] + box[3, i, j] * 8]
    np.testing.assert_allclose(decoded, bbox, atol=1e-4)
    np.testing.assert_allclose(c[j] + kp[0::2, i, j] * 8, kps[:, 0], atol=1e-4)
    np.testing.assert_allclose(c[i] + kp[1::2, i, j] * 8, kps[:, 1], atol=1e-4)


def test_detector_score_ranks_the_central_cell_first():
    logits = torch.tensor([[4.0, 3.0], [4.0, -3.0], [-4.0, 3.0]]).T.reshape(1, 2, 1, 3)  # (1, 2, 1, 3)
    score = ts.DetectorNet.score(logits).flatten()
    assert score[0] > score[1] > 0.5 > score[2]  # central face cell > off-centre face cell > background


def test_scrfd_layout_places_predictions_where_insightface_decodes_them(tmp_path):
    """Insightface decodes row (loc, anchor) of stride s as anchor point (col*s, row*s) + distance*s: the decoded
    boxes and landmarks must be the network's own predictions mapped from its internal grid to image pixels."""
    torch.manual_seed(0)
    net = ts.DetectorNet(16).eval()
    layout = ts.SCRFDLayout(net, 64).eval()
    x = torch.randn(1, 3, 320, 256)  # (1, 3, H, W), not square
    with torch.no_grad():
        outs = layout(x)
        logits, box, kp = net(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear"))
    assert [tuple(o.shape) for o in outs[:3]] == [(320 * 256 // 64 * 2 // (k * k), 1) for k in (1, 2, 4)]
    assert float(outs[1].abs().max()) == 0.0 and float(outs[2].abs().max()) == 0.0  # strides 16/32 unused
    i, j = 3, 5  # an internal cell; its centre in internal pixels
    ci, cj = (i + 0.5) * 8 - 0.5, (j + 0.5) * 8 - 0.5
    sy, sx = 320 / 64, 256 / 64
    expect_x1 = (cj - box[0, 0, i, j].item() * 8 + 0.5) * sx - 0.5
    expect_ky = (ci + kp[0, 1, i, j].item() * 8 + 0.5) * sy - 0.5
    oi, oj = int(i * sy) + 1, int(j * sx) + 2  # an output cell inside that internal cell's area
    row = (oi * (256 // 8) + oj) * 2  # anchor 0
    assert outs[0][row, 0].item() == pytest.approx(net.score(logits)[0, 0, i, j].item(), abs=1e-6)
    assert outs[0][row + 1, 0].item() == 0.0  # anchor 1 unused
    assert oj * 8 - outs[3][row, 0].item() * 8 == pytest.approx(expect_x1, abs=1e-3)
    assert oi * 8 + outs[6][row, 1].item() * 8 == pytest.approx(expect_ky, abs=1e-3)


def test_exported_face_pack_computes_what_torch_computes(tmp_path):
    import onnxruntime

    torch.manual_seed(1)
    det, rec = ts.DetectorNet(16).eval(), ts.IdentityNet(32, 16).eval()
    folder = ts.export_face_pack(det, rec, tmp_path / "pack", 64)
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        expected = ts.SCRFDLayout(det, 64)(x)
    got = onnxruntime.InferenceSession(str(folder / ts.DET_FILE)).run(None, {"input.1": x.numpy()})
    assert len(got) == 9
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    crops = torch.randn(2, 3, 112, 112)
    emb = onnxruntime.InferenceSession(str(folder / ts.REC_FILE)).run(None, {"input.1": crops.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(emb, rec(crops).numpy(), atol=1e-4)


def test_clip_training_preprocessing_matches_clip_scorer(scorer, test_samples):
    ours = ts.clip_pixels([test_samples[0].target], scorer.input_resolution)
    np.testing.assert_allclose(ours.numpy(), scorer.preprocess(test_samples[0].target).numpy(), atol=1e-5)


def test_trimmed_text_padding_does_not_change_text_features(scorer):
    import clip

    tokens = clip.tokenize(["a photo of a person with a beard", "a sepia photograph of a person in a forest"])
    length = int((tokens != 0).sum(1).max())
    with torch.no_grad():
        full = scorer.model.encode_text(tokens)
        trimmed = scorer.model.encode_text(tokens[:, :length])
    np.testing.assert_allclose(full.numpy(), trimmed.numpy(), atol=1e-5)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="det_resolution"):
        ts.ScorerConfig(det_resolution=50)
    with pytest.raises(ValueError, match="clip.batch"):
        ts.ScorerConfig(clip=ts.Schedule(steps=10, batch=7, lr=1e-3))
    with pytest.raises(ValueError, match="rec.steps"):
        ts.ScorerConfig(rec=ts.Schedule(steps=0, batch=8, lr=1e-3))


# ---------------------------------------------------------------------------------------------- --quick training
def test_quick_training_writes_loadable_deterministic_scorers(tmp_path):
    from instantportrait.eval.clip_score import ClipScorer
    from instantportrait.face.encoder import FaceEncoder

    result = ts.main(["--out", str(tmp_path / "a"), "--quick"])
    pack, clip_file = tmp_path / "a" / ts.FACE_PACK_DIR, tmp_path / "a" / ts.CLIP_DIR / ts.CLIP_FILE
    info = FaceEncoder(pack).describe()
    assert (info["detection_model"], info["recognition_model"]) == (ts.DET_FILE, ts.REC_FILE)
    scorer = ClipScorer(weights=clip_file).load()
    assert scorer.text_features(["a photo of a person with a beard"]).shape == (1, ts.ScorerConfig().clip_embed_dim)
    for card in (pack / "README.md", clip_file.parent / "README.md"):
        text = card.read_text()
        assert "toy" in text.lower() and "synthetic" in text.lower() and "license:" in text
    assert set(result) >= {"face", "clip", "timings_s", "sizes_mb"}
    assert 0.0 <= result["face"]["detection_rate"] <= 1.0
    # same seed, same bytes; another seed, other weights
    ts.main(["--out", str(tmp_path / "b"), "--quick"])
    ts.main(["--out", str(tmp_path / "c"), "--quick", "--seed", "1"])
    for rel in (f"{ts.FACE_PACK_DIR}/{ts.DET_FILE}", f"{ts.FACE_PACK_DIR}/{ts.REC_FILE}",
                f"{ts.CLIP_DIR}/{ts.CLIP_FILE}"):
        a, b, c = ((tmp_path / d / rel).read_bytes() for d in "abc")
        assert a == b, rel
        assert a != c, rel

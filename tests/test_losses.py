"""Losses: hand-computed values, alignment against insightface/cv2, and where gradients go (student yes, teacher no)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instantportrait.tiny.diffusion import tiny_scheduler, tiny_unet, tiny_vae
from instantportrait.training.arcface import DifferentiableArcFace, IResNet
from instantportrait.training.inversion import resolve_alphas_cumprod
from instantportrait.training.losses import (
    UNetFeatureDiscriminator,
    annealing_identity_weight,
    arcface_align,
    arcface_template,
    box_weight_map,
    constant_identity_weight,
    distillation_loss,
    epsilon_loss,
    face_region_crop,
    hinge_d_loss,
    hinge_g_loss,
    identity_loss,
    lpips_like_distance,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    paired_regression_loss,
    sds_loss,
    similarity_transform,
    triplet_loss,
    unet_encoder_features,
    vae_encoder_feature_fn,
)

# Five plausible landmarks (eyes, nose, mouth corners) on skimage's astronaut, and a tilted, smaller face.
ASTRONAUT_KPS = ((190.0, 100.0), (250.0, 95.0), (222.0, 130.0), (198.0, 160.0), (245.0, 157.0))
TILTED_KPS = ((20.0, 30.0), (52.0, 38.0), (33.0, 50.0), (18.0, 64.0), (44.0, 70.0))


@pytest.fixture(scope="module")
def unet():
    return tiny_unet().requires_grad_(False)


def _scheduler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy-2 copy= warning inside diffusers' Euler scheduler
        return tiny_scheduler()


@pytest.fixture(scope="module")
def alphas() -> torch.Tensor:
    return resolve_alphas_cumprod(_scheduler())


@pytest.fixture(scope="module")
def arcface() -> DifferentiableArcFace:
    torch.manual_seed(0)
    return DifferentiableArcFace(IResNet((1, 1, 1, 1), widths=(8, 8, 16, 16), num_features=32))


def _cond(b: int = 2, h: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(b, 4, h, h, generator=g), "source": torch.randn(b, 4, h, h, generator=g),
            "text": torch.randn(b, 77, 32, generator=g), "uncond": torch.randn(1, 77, 32, generator=g),
            "noise": torch.randn(b, 4, h, h, generator=g)}


# ---------------------------------------------------------------------------------------------------- alignment
def test_similarity_transform_matches_insightface_estimate_norm_and_cv2():
    import cv2
    from insightface.utils.face_align import estimate_norm

    template = arcface_template().numpy()
    for kps in (ASTRONAUT_KPS, TILTED_KPS):
        kps = np.asarray(kps, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # skimage's estimate() deprecation inside insightface
            ref = estimate_norm(kps)  # (2, 3) Umeyama via skimage
        ref_cv, _ = cv2.estimateAffinePartial2D(kps, template, ransacReprojThreshold=1e3)
        ours = similarity_transform(torch.from_numpy(kps)[None], arcface_template())[0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        np.testing.assert_allclose(ours, ref_cv, atol=1e-3)
    # points already on the template map to the identity
    ident = similarity_transform(arcface_template()[None], arcface_template())[0]
    torch.testing.assert_close(ident, torch.eye(2, 3), atol=1e-5, rtol=0)


def test_arcface_align_matches_cv2_warp_affine():
    import cv2
    import skimage.data

    img = skimage.data.astronaut().astype(np.float32)  # (512, 512, 3) RGB, 0-255
    small = cv2.resize(img, (80, 80), interpolation=cv2.INTER_AREA)  # a face near the border: padding is tested
    template = arcface_template().numpy()
    for image, kps in ((img, ASTRONAUT_KPS), (small, TILTED_KPS)):
        kps = np.asarray(kps, dtype=np.float32)
        matrix, _ = cv2.estimateAffinePartial2D(kps, template, ransacReprojThreshold=1e3)
        ref = cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0)  # (112, 112, 3)
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W)
        out = arcface_align(pixels, torch.from_numpy(kps)[None], fill=0.0)[0].permute(1, 2, 0).numpy()
        assert out.shape == (112, 112, 3)
        diff = np.abs(out - ref)
        assert diff.mean() < 0.05 and diff.max() < 2.0, (diff.mean(), diff.max())  # 0-255 scale
    # the same in [-1, 1] with black padding (-1), batched, and differentiable
    both = torch.from_numpy(np.stack([img[:80, :80], small])).permute(0, 3, 1, 2) / 127.5 - 1  # (2, 3, 80, 80)
    both.requires_grad_(True)
    kps = torch.tensor([TILTED_KPS, TILTED_KPS])
    aligned = arcface_align(both, kps)  # (2, 3, 112, 112)
    ref = cv2.warpAffine(small, cv2.estimateAffinePartial2D(kps[1].numpy(), template,
                                                            ransacReprojThreshold=1e3)[0], (112, 112))
    np.testing.assert_allclose(aligned[1].detach().permute(1, 2, 0).numpy(), ref / 127.5 - 1, atol=2 / 127.5)
    aligned.sum().backward()
    assert both.grad is not None and both.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="src_kps"):
        arcface_align(both, kps[:, :4])


# ---------------------------------------------------------------------------------------------------- identity
def test_identity_loss_zero_for_identical_and_gradients(arcface):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1  # (2, 3, 64, 64) in [-1, 1]
    kps = torch.tensor([TILTED_KPS, TILTED_KPS])
    loss, logs = identity_loss(src.clone(), src, kps, arcface)
    assert abs(loss.item()) < 1e-5 and abs(logs["id_cos"] - 1) < 1e-5

    pred = (src + 0.5 * torch.randn(src.shape, generator=g)).clamp(-1, 1).requires_grad_(True)
    loss, logs = identity_loss(pred, src, kps, arcface)
    assert loss.item() > 1e-4 and set(logs) == {"id_loss", "id_cos"}
    # source embeddings instead of source pixels give the same loss
    with torch.no_grad():
        src_emb = arcface(arcface_align(src, kps))
    loss_emb, _ = identity_loss(pred, src_emb, kps, arcface)
    torch.testing.assert_close(loss_emb, loss)
    # per-sample weights: mean_b w_b (1 - cos_b)
    with torch.no_grad():
        cos = F.cosine_similarity(arcface(arcface_align(pred, kps)), src_emb)
    w = torch.tensor([0.25, 2.0])
    loss_w, _ = identity_loss(pred, src_emb, kps, arcface, weights=w)
    torch.testing.assert_close(loss_w, (w * (1 - cos)).mean())
    loss_w.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in arcface.parameters())


def test_annealing_identity_weight_schedule(alphas):
    t = torch.arange(0, 1000, 50)  # (20,)
    w = annealing_identity_weight(t, alphas)
    assert w.shape == t.shape and w.dtype == torch.float32
    assert torch.all(w[1:] < w[:-1]), "must decrease with the noise level"
    assert w[0] > 0.99 and w[-1] < 0.05  # (no range check: the weight is clamped to [0, 1] before it is returned)
    torch.testing.assert_close(w, alphas[t])
    torch.testing.assert_close(annealing_identity_weight(t, alphas, base=2.0, power=2.0), 2 * alphas[t] ** 2)
    half = annealing_identity_weight(t, alphas, step=250, ramp_steps=1000)
    torch.testing.assert_close(half, 0.25 * w)
    torch.testing.assert_close(annealing_identity_weight(t, alphas, step=5000, ramp_steps=1000), w)
    torch.testing.assert_close(annealing_identity_weight(t, alphas, step=0, ramp_steps=1000), torch.zeros_like(w))
    torch.testing.assert_close(annealing_identity_weight(t, alphas, ramp_steps=1000), w)  # no step: no ramp
    torch.testing.assert_close(annealing_identity_weight(t, _scheduler()), w)  # a scheduler works too
    c = constant_identity_weight(t, 0.3)
    assert c.shape == t.shape and torch.all(c == 0.3)


# ---------------------------------------------------------------------------------------------------- adversarial
def test_hinge_and_nonsaturating_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    d, logs = hinge_d_loss(real, fake)
    assert d.item() == pytest.approx((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3)
    assert logs["d_acc"] == pytest.approx(0.5 * (2 / 3 + 1 / 3))
    g, _ = hinge_g_loss(fake)
    assert g.item() == pytest.approx(1 / 6)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    d_ns, _ = nonsaturating_d_loss(real, fake)
    expected = sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3
    assert d_ns.item() == pytest.approx(expected, rel=1e-6)
    g_ns, logs = nonsaturating_g_loss(fake)
    assert g_ns.item() == pytest.approx(sum(sp(-f) for f in fake.tolist()) / 3, rel=1e-6)
    assert all(isinstance(v, float) for v in logs.values())


def test_unet_encoder_features_match_the_full_forward(unet):
    c = _cond()
    model_in = torch.cat([c["latents"], c["source"]], dim=1)  # (2, 8, 8, 8)
    t = torch.tensor([10, 700])
    captured: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
             for b in [*unet.down_blocks, unet.mid_block]]
    try:
        with torch.no_grad():
            unet(model_in, t, encoder_hidden_states=c["text"])
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        feats = unet_encoder_features(unet, model_in, t, c["text"])
    assert len(feats) == len(captured) == 3
    for ours, ref in zip(feats, captured):
        torch.testing.assert_close(ours, ref)


def test_unet_feature_discriminator_gradients(unet, alphas):
    disc = UNetFeatureDiscriminator(unet, alphas, hidden=16)
    c = _cond()
    latents = c["latents"].clone().requires_grad_(True)
    t = torch.tensor([100, 600])
    logits = disc(latents, c["source"], c["text"], t, c["noise"])
    assert logits.shape == (2,)
    loss, _ = hinge_g_loss(logits)
    loss.backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    assert all(p.grad is not None for p in disc.parameters())
    n_teacher = sum(p.numel() for p in unet.parameters())
    assert sum(p.numel() for p in disc.parameters()) < n_teacher
    assert not any(k.startswith("teacher") for k in disc.state_dict())
    assert len(disc.heads) == 3
    one = UNetFeatureDiscriminator(unet, alphas, hidden=8, levels=[2], text_conditioning=False)
    assert one(c["latents"], c["source"], c["text"], t, c["noise"]).shape == (2,)
    with pytest.raises(ValueError, match="levels"):
        UNetFeatureDiscriminator(unet, alphas, levels=[5])


def test_unet_feature_discriminator_on_the_sd15_architecture(alphas):
    """The real SD1.5 InstructPix2Pix UNet shape (8-channel conv_in, 4 down blocks), on the meta device: no memory."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=8, cross_attention_dim=768, sample_size=64)
        disc = UNetFeatureDiscriminator(unet, alphas.to("meta"))
        latents = torch.randn(2, 4, 64, 64, requires_grad=True)
        args = (torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768), torch.tensor([10, 500]), torch.randn(2, 4, 64, 64))
        feats = disc.teacher_features(latents, *args)
        logits = disc(latents, *args)
        logits.sum().backward()
    assert [tuple(f.shape[1:]) for f in feats] == [(320, 32, 32), (640, 16, 16), (1280, 8, 8), (1280, 8, 8),
                                                   (1280, 8, 8)]
    assert logits.shape == (2,) and latents.grad is not None and len(disc.heads) == 5
    assert all(p.grad is None for p in unet.parameters())


# ---------------------------------------------------------------------------------------------------- distillation
def test_box_weight_map_and_paired_regression_loss():
    # a 64-px image, 8x8 latents (8 px each): the box (16, 8)-(40, 32) covers latent columns 2..4 and rows 1..3
    boxes = torch.tensor([[16.0, 8.0, 40.0, 32.0], [0.0, 0.0, 64.0, 64.0]])
    w = box_weight_map(boxes, (64, 64), (8, 8), 4.0)
    assert w.shape == (2, 1, 8, 8)
    expect = torch.ones(8, 8)
    expect[1:4, 2:5] = 4.0
    torch.testing.assert_close(w[0, 0], expect)
    assert (w[1] == 4.0).all()  # the whole image
    grown = box_weight_map(boxes[:1], (64, 64), (8, 8), 4.0, expand=2.0)  # (4, -4)-(52, 44): columns 0..5, rows 0..4
    assert int((grown == 4.0).sum()) == 6 * 5 and bool((grown[0, 0, :5, :6] == 4.0).all())

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    t = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    plain, logs = paired_regression_loss(s, t)
    assert plain.item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6) and logs["pair_loss"] == plain.item()
    uniform, _ = paired_regression_loss(s, t, torch.full((2, 1, 8, 8), 3.0))
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-6)  # a constant weight changes nothing
    weighted, _ = paired_regression_loss(s, t, w)
    err = ((s - t) ** 2).mean(dim=1, keepdim=True)  # (2, 1, 8, 8)
    assert weighted.item() == pytest.approx(((err * w).sum() / w.sum()).item(), rel=1e-6)
    only_face = s.detach().clone()
    only_face[0, :, 1:4, 2:5] = t.detach()[0, :, 1:4, 2:5]  # fix the face of sample 0: the weighted loss drops more
    assert paired_regression_loss(only_face, t, w)[0] / weighted < paired_regression_loss(only_face, t)[0] / plain
    weighted.backward()
    assert s.grad is not None and t.grad is None  # the pair's target is a target
    with pytest.raises(ValueError, match="weight_map"):
        paired_regression_loss(s, t, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="shapes differ"):
        paired_regression_loss(s, t[:, :3])


def test_distillation_losses():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    t = torch.randn(2, 4, 8, 8, generator=g).requires_grad_(True)
    l2, logs = distillation_loss(s, t)
    assert l2.item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    assert "distill_latent_l2" in logs
    l1, _ = distillation_loss(s, t, kind="l1")
    assert l1.item() == pytest.approx((s - t).abs().mean().item(), rel=1e-6)
    l2.backward()
    assert s.grad is not None and t.grad is None  # the teacher output is a target

    vae = tiny_vae().requires_grad_(False)
    feat_fn = vae_encoder_feature_fn(vae)
    ps = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    pt = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    zero, _ = distillation_loss(pt.clone(), pt, space="pixel", kind="perceptual", perceptual_fn=feat_fn)
    assert abs(zero.item()) < 1e-6
    perc, logs = distillation_loss(ps, pt, space="pixel", kind="perceptual", perceptual_fn=feat_fn)
    assert perc.item() > 0 and "distill_pixel_perceptual" in logs
    torch.testing.assert_close(perc, lpips_like_distance(feat_fn(ps), feat_fn(pt)).mean())
    both, _ = distillation_loss(ps, pt, space="pixel", kind="l2+perceptual", perceptual_fn=feat_fn,
                                perceptual_weight=0.5)
    torch.testing.assert_close(both, F.mse_loss(ps, pt) + 0.5 * perc)
    both.backward()
    assert ps.grad is not None and all(p.grad is None for p in vae.parameters())
    with pytest.raises(ValueError, match="pixel"):
        distillation_loss(s, t, space="pixel")
    with pytest.raises(ValueError, match="perceptual_fn"):
        distillation_loss(s, t, kind="perceptual")


def _ip2p_cfg(unet, z, t, source, text, uncond, s_t, s_i):
    """diffusers' InstructPix2Pix guidance written out with three separate UNet calls."""
    b = z.shape[0]
    u = uncond.expand(b, -1, -1)
    tt = torch.full((b,), int(t[0])) if t.ndim else torch.full((b,), int(t))
    e_text = unet(torch.cat([z, source], 1), tt, encoder_hidden_states=text).sample
    e_image = unet(torch.cat([z, source], 1), tt, encoder_hidden_states=u).sample
    e_uncond = unet(torch.cat([z, torch.zeros_like(source)], 1), tt, encoder_hidden_states=u).sample
    return e_uncond + s_t * (e_text - e_image) + s_i * (e_image - e_uncond)


def test_sds_gradient_is_weighted_score_difference(unet, alphas):
    c = _cond()
    x = c["latents"].clone().requires_grad_(True)
    t = torch.tensor([400, 400])
    loss, logs = sds_loss(x, c["source"], c["text"], c["uncond"], unet, alphas, t, c["noise"],
                          text_guidance=7.5, image_guidance=1.5)
    loss.backward()
    a = alphas[400]
    with torch.no_grad():
        z_t = a.sqrt() * c["latents"] + (1 - a).sqrt() * c["noise"]
        eps_hat = _ip2p_cfg(unet, z_t, t, c["source"], c["text"], c["uncond"], 7.5, 1.5)
    expected = (1 - a) * (eps_hat - c["noise"])  # w(t) (ε̂ − ε), w = 1 − ᾱ
    torch.testing.assert_close(x.grad * x.numel(), expected, atol=1e-4, rtol=1e-4)  # mean-reduced, like L_distill
    assert all(p.grad is None for p in unet.parameters())
    assert logs["sds_loss"] == pytest.approx(0.5 * expected.pow(2).mean().item(), rel=1e-4)
    # per element, a weight of 1 means what it means for the mean L2 of L_distill: the SDS loss equals
    # 0.5 * distillation_loss onto the SDS target x - grad, and so does its gradient
    x3 = c["latents"].clone().requires_grad_(True)
    sds3 = sds_loss(x3, c["source"], c["text"], c["uncond"], unet, alphas, t, c["noise"], text_guidance=7.5,
                    image_guidance=1.5)[0]
    torch.testing.assert_close(sds3, 0.5 * distillation_loss(x3, c["latents"] - expected)[0], atol=1e-5, rtol=1e-4)
    # uniform weighting and a tensor weighting scale the same direction
    x2 = c["latents"].clone().requires_grad_(True)
    sds_loss(x2, c["source"], c["text"], c["uncond"], unet, alphas, t, c["noise"],
             weighting=torch.tensor([2.0, 2.0]))[0].backward()
    torch.testing.assert_close(x2.grad * x2.numel(), 2 * (eps_hat - c["noise"]), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- style
def test_triplet_loss_values_and_gradients():
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    zero, logs = triplet_loss(a, torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert zero.item() == 0.0 and logs["triplet_active"] == 0.0
    # cosine: d(a, p) = 1, d(a, n) = 1 - 1/sqrt(2); loss = 1 - (1 - 1/sqrt 2) + 0.2
    loss, logs = triplet_loss(a, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]]))
    assert loss.item() == pytest.approx(1 / math.sqrt(2) + 0.2, rel=1e-6)
    assert logs["triplet_d_pos"] == pytest.approx(1.0)
    # l2, batch of two: relu(5 - 1 + 0.2) = 4.2 and relu(0 - 2 + 0.2) = 0 -> mean 2.1
    anchor = torch.zeros(2, 2, requires_grad=True)
    pos = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    neg = torch.tensor([[1.0, 0.0], [2.0, 0.0]], requires_grad=True)
    loss, logs = triplet_loss(anchor, pos, neg, distance="l2")
    assert loss.item() == pytest.approx(2.1) and logs["triplet_active"] == 0.5
    loss.backward()
    assert anchor.grad is not None and pos.grad is None and neg.grad is None


def test_face_region_crop():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 32, 32, generator=g).requires_grad_(True)
    boxes = torch.tensor([[4.0, 6.0, 20.0, 22.0], [10.0, 0.0, 26.0, 16.0]])
    crops = face_region_crop(pixels, boxes, 16)  # 1:1: exactly the pixels in the box
    assert crops.shape == (2, 3, 16, 16)
    torch.testing.assert_close(crops[0], pixels[0, :, 6:22, 4:20])
    torch.testing.assert_close(crops[1], pixels[1, :, 0:16, 10:26])
    half = face_region_crop(pixels, boxes, 8)  # 2:1 averages 2x2 blocks
    torch.testing.assert_close(half[0], F.avg_pool2d(pixels[0:1, :, 6:22, 4:20], 2)[0])
    wide = face_region_crop(pixels, torch.tensor([[4.0, 10.0, 20.0, 18.0]] * 2), 16)  # 16x8 box -> 16x16 square
    torch.testing.assert_close(wide[0], pixels[0, :, 6:22, 4:20])
    (crops.sum() + half.sum()).backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_epsilon_loss():
    g = torch.Generator().manual_seed(0)
    out, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    loss, logs = epsilon_loss(out, target)
    torch.testing.assert_close(loss, F.mse_loss(out, target))
    assert logs["eps_loss"] == pytest.approx(loss.item())
    w = torch.tensor([1.0, 0.0, 2.0])
    weighted, _ = epsilon_loss(out, target, weights=w)
    per = ((out - target) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(weighted, (w * per).mean())

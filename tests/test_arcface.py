"""The differentiable ArcFace: IResNet layout, ONNX round trip (onnx2torch vs torch vs onnxruntime vs insightface)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from instantportrait.training.arcface import (
    IRESNET_LAYERS,
    DifferentiableArcFace,
    IResNet,
    iresnet,
    load_arcface_onnx,
    load_iresnet,
    onnx_input_normalisation,
)

TINY = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "num_features": 32}


def _tiny_iresnet(seed: int = 0) -> IResNet:
    torch.manual_seed(seed)
    model = IResNet(**TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics so the eval-mode maths is exercised
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[IResNet, str]:
    model = _tiny_iresnet()
    path = str(tmp_path_factory.mktemp("arcface") / "w_tiny_iresnet.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy (dynamo=False) exporter, on purpose
        torch.onnx.export(model, (torch.randn(1, 3, 112, 112),), path, dynamo=False, opset_version=17,
                          input_names=["input.1"], output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    return model, path


def test_iresnet_state_dict_layout_matches_arcface_torch():
    keys = set(_tiny_iresnet().state_dict())
    for key in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.bias", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.running_mean",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight", "layer4.0.conv2.weight",
                "bn2.weight", "fc.weight", "fc.bias", "features.weight", "features.running_mean"):
        assert key in keys, key
    with torch.device("meta"):  # full-size shapes without allocating
        r50, r100 = iresnet("r50"), iresnet("r100")
    assert r50.fc.weight.shape == (512, 512 * 7 * 7)
    assert len(r50.layer3) == 14 and len(r100.layer3) == 30 and IRESNET_LAYERS["r18"] == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="unknown IResNet"):
        iresnet("r42")


def test_load_iresnet_roundtrip(tmp_path):
    from safetensors.torch import save_file

    model = _tiny_iresnet(1)
    save_file(model.state_dict(), str(tmp_path / "backbone.safetensors"))
    torch.save(model.state_dict(), str(tmp_path / "backbone.pth"))
    x = torch.randn(2, 3, 112, 112)
    kwargs = {k: v for k, v in TINY.items() if k != "layers"}
    with torch.no_grad():
        for name in ("backbone.safetensors", "backbone.pth"):
            loaded = load_iresnet(tmp_path / name, TINY["layers"], **kwargs)
            torch.testing.assert_close(loaded(x), model(x))
        wrapped = DifferentiableArcFace.from_iresnet(tmp_path / "backbone.pth", TINY["layers"], **kwargs)
        torch.testing.assert_close(wrapped(x), torch.nn.functional.normalize(model(x), dim=-1))
    with pytest.raises(RuntimeError):  # r18 has 2 blocks per stage: a 1-block checkpoint must not load silently
        load_iresnet(tmp_path / "backbone.pth", "r18", **kwargs)


def test_onnx_roundtrip_matches_torch_and_onnxruntime(tiny_onnx):
    import onnxruntime as ort

    model, path = tiny_onnx
    x = torch.randn(3, 3, 112, 112)
    converted = load_arcface_onnx(path)
    with torch.no_grad():
        ref = model(x).numpy()
        out = converted(x).numpy()
    ort_out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input.1": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out, ort_out, atol=1e-4, rtol=1e-4)
    assert all(not p.requires_grad for p in converted.parameters())
    assert onnx_input_normalisation(path) == (127.5, 127.5)


def test_wrapper_matches_insightface_get_feat_and_passes_gradients(tiny_onnx):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    _, path = tiny_onnx
    arcface = DifferentiableArcFace.from_onnx(path)
    rng = np.random.default_rng(0)
    crop_rgb = rng.integers(0, 256, size=(2, 112, 112, 3), dtype=np.uint8)
    # insightface gets BGR crops (cv2 convention) and swaps to RGB in blobFromImages
    ref = ArcFaceONNX(path).get_feat([np.ascontiguousarray(c[..., ::-1]) for c in crop_rgb])  # (2, D)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    pixels = torch.from_numpy(crop_rgb).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (2, 3, 112, 112) in [-1, 1]
    pixels.requires_grad_(True)
    emb = arcface(pixels)  # (2, D)
    np.testing.assert_allclose(emb.detach().numpy(), ref, atol=1e-4)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    # the colour order matters: a BGR input gives another embedding
    assert (emb.detach() - arcface(pixels.detach().flip(1))).abs().max() > 1e-3
    emb.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in arcface.parameters())


def test_wrapper_stays_frozen_under_train_and_checks_size():
    arcface = DifferentiableArcFace(_tiny_iresnet())
    parent = torch.nn.Sequential(arcface).train()
    assert parent.training and not arcface.backbone.training
    before = arcface.backbone.bn1.running_mean.clone()
    arcface(torch.rand(2, 3, 112, 112) * 2 - 1)
    torch.testing.assert_close(arcface.backbone.bn1.running_mean, before)
    with pytest.raises(ValueError, match="112x112"):
        arcface(torch.zeros(1, 3, 64, 64))
    # MXNet-style recognisers normalise inside the graph: they get the raw 0-255 RGB blob
    mxnet_style = DifferentiableArcFace(_tiny_iresnet(), input_mean=0.0, input_std=1.0)
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = torch.nn.functional.normalize(mxnet_style.backbone((x + 1) * 127.5), dim=-1)
    torch.testing.assert_close(mxnet_style(x), expected)

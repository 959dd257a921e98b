"""Shared fixtures. No test touches the network: every test runs with the Hub in offline mode and with outbound
connections (other than loopback) refused."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

_real_connect = socket.socket.connect


def _guarded_connect(self, address):  # loopback stays allowed (the app's own server in app tests)
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
        return _real_connect(self, address)
    raise OSError(f"network access attempted in a test: {address!r}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    yield


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models are latency-bound: two OpenMP threads on a 2-core machine that also runs subprocesses (CLI tests,
    the app server, Chromium) mostly wait for each other. One thread keeps the suite's runtime stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `pytest -m gpu` on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ip2p(tmp_path_factory) -> Path:
    """A tiny checkpoint in InstructPix2Pix's on-disk format."""
    from instantportrait.tiny.diffusion import save_tiny_instruct_pix2pix

    return save_tiny_instruct_pix2pix(tmp_path_factory.mktemp("models") / "tiny-ip2p")


@pytest.fixture(scope="session")
def tiny_ipnet(tiny_ip2p, tmp_path_factory) -> Path:
    """A tiny IPNet built from the tiny InstructPix2Pix checkpoint, saved in our pipeline format."""
    from instantportrait import ipnet_from_instruct_pix2pix

    path = tmp_path_factory.mktemp("models") / "tiny-ipnet"
    ipnet_from_instruct_pix2pix(tiny_ip2p).save_pretrained(path, card_info={"name": "tiny IPNet (test)"})
    return path


@pytest.fixture()
def portrait():
    from instantportrait.tiny.images import portrait_like_image

    return portrait_like_image(48, seed=3)


@pytest.fixture(scope="session")
def tiny_face_pack(tmp_path_factory) -> Path:
    """A tiny insightface pack (ONNX detector + recogniser) that FaceEncoder loads offline."""
    from instantportrait.tiny.face_pack import build_tiny_face_pack

    return build_tiny_face_pack(tmp_path_factory.mktemp("face_pack") / "tiny_pack")


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> Path:
    """A tiny clip-anytorch model file that ClipScorer(weights=...) loads."""
    from instantportrait.tiny.clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", seed=0)


@pytest.fixture(scope="session")
def astronaut_image():
    """A real face photo shipped with scikit-image (512x512 RGB PIL image)."""
    from PIL import Image
    from skimage.data import astronaut

    return Image.fromarray(astronaut())

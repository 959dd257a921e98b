"""The tiny latent decoder: architecture from the VAE config, files, pipeline switch, distillation (issue 7)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from instantportrait import InstantPortraitPipeline, ModelNotAvailableError
from instantportrait.pipelines.tiny_decoder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    TinyDecoderConfig,
    build_tiny_decoder,
    load_tiny_decoder,
    save_tiny_decoder,
)
from instantportrait.tiny.diffusion import tiny_vae
from instantportrait.tiny.images import portrait_like_image
from train import train_tiny_decoder as ttd

FAST = {"size": 32, "world_identities": 12, "batch_size": 8, "num_images": 32, "latency_repeats": 1}


def load_pipe(path) -> InstantPortraitPipeline:
    pipe = InstantPortraitPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("blocks, factor", [((8, 16, 16, 16), 8), ((8, 16, 16), 4)])
def test_output_shape_matches_the_full_decoder(blocks, factor):
    vae = tiny_vae(block_out_channels=blocks)
    tiny = build_tiny_decoder(vae)
    assert (tiny.config.upsampling_factor, tiny.config.latent_channels) == (factor, 4)
    z = torch.randn(2, 4, 5, 6, generator=gen())  # scaled latents, non-square
    with torch.no_grad():
        full = vae.decode(z / vae.config.scaling_factor).sample
        out = tiny.decode(z)
    assert out.shape == full.shape == (2, 3, 5 * factor, 6 * factor)
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0


def test_sd_vae_config_gives_taesd_decoder_and_16_channel_latents_work():
    from diffusers import AutoencoderTiny

    sd = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "out_channels": 3}
    tiny = build_tiny_decoder(sd)
    assert tiny.config == TinyDecoderConfig(4, 8, 64, (3, 3, 3, 1), 3)
    taesd = AutoencoderTiny().decoder  # diffusers' TAESD defaults
    assert sum(p.numel() for p in tiny.parameters()) == sum(p.numel() for p in taesd.parameters())
    wide = build_tiny_decoder({**sd, "latent_channels": 16}, width=8, num_blocks=(1, 1, 1, 1))
    assert wide.decode(torch.randn(1, 16, 3, 3)).shape == (1, 3, 24, 24)


def test_save_load_round_trip_is_exact(tmp_path):
    tiny = build_tiny_decoder(tiny_vae(), seed=1)
    folder = save_tiny_decoder(tiny, tmp_path / "dec", {"distilled_from": "some/ipnet", "quality": None})
    z = torch.randn(2, 4, 4, 4, generator=gen())
    for source in (folder, folder / WEIGHTS_FILE):
        loaded = load_tiny_decoder(source)
        assert loaded.config == tiny.config
        torch.testing.assert_close(loaded.decode(z), tiny.decode(z), rtol=0, atol=0)
    assert "some/ipnet" in (folder / "README.md").read_text()
    assert json.loads((folder / CONFIG_FILE).read_text())["config"]["num_blocks"] == [3, 3, 3, 1]
    half = save_tiny_decoder(tiny.to(torch.bfloat16), tmp_path / "half")
    assert load_tiny_decoder(half).dtype == torch.bfloat16
    assert not list(tmp_path.rglob("*.tmp-*"))  # atomic writes leave no temporary files


def test_pipeline_uses_the_tiny_decoder_and_switches_back_exactly(tiny_ipnet, tmp_path):
    portrait = portrait_like_image(48, seed=3)
    pipe = load_pipe(tiny_ipnet)
    plain = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    tiny = build_tiny_decoder(pipe.vae, seed=0)
    assert pipe.use_tiny_decoder(tiny) is pipe and pipe.tiny_decoder is tiny
    fast = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    assert fast.shape == plain.shape == (1, 48, 48, 3)
    assert np.abs(fast - plain).mean() > 1e-3  # the tiny decoder really decoded
    latents = pipe(portrait, "add a hat", generator=gen(), output_type="latent").images
    torch.testing.assert_close(pipe.decode_latents(latents), tiny.decode(latents), rtol=0, atol=0)
    pipe.use_full_decoder()
    assert pipe.tiny_decoder is None
    again = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    np.testing.assert_array_equal(again, plain)
    # a saved decoder by path; it follows the pipeline's dtype
    pipe.use_tiny_decoder(save_tiny_decoder(tiny, tmp_path / "dec"))
    np.testing.assert_array_equal(pipe(portrait, "add a hat", generator=gen(), output_type="np").images, fast)
    pipe.to(torch.bfloat16)
    assert pipe.tiny_decoder.dtype == torch.bfloat16


def test_distillation_reduces_the_gap_to_the_full_decoder(tiny_ipnet, tmp_path):
    cfg = ttd.DistillConfig(model=str(tiny_ipnet), out=str(tmp_path / "out"), steps=40, lr=3e-3, warmup_steps=5,
                            eval_images=4, **FAST)
    vae = ttd.load_vae(cfg.model, torch.device("cpu"))
    before = ttd.evaluate(build_tiny_decoder(vae, seed=cfg.seed), cfg.model, n=4, size=32, world_identities=12,
                          latency_repeats=1, edits=False)
    out = ttd.train(cfg)
    quality = json.loads((out / ttd.QUALITY_FILE).read_text())
    l1_before = before["reconstruction"]["tiny"]["l1_to_full"]
    l1_after = quality["reconstruction"]["tiny"]["l1_to_full"]
    assert l1_after < 0.7 * l1_before, (l1_before, l1_after)
    assert quality["edits"]["num_images"] == 4 and 0 < quality["edits"]["l1_tiny_to_full"] < 1
    assert set(quality["latency_ms"]) == {"full", "tiny"} and quality["gflop"]["tiny"] < quality["gflop"]["full"]
    card = (out / "README.md").read_text()
    assert "Measured quality cost" in card and f"{l1_after:.4f}" in card
    assert not (out / ttd.CHECKPOINT_DIR).exists()
    # the saved decoder is the one evaluated: --evaluate measures it again to the same numbers
    again = ttd.main(["--model", cfg.model, "--evaluate", str(out), "--eval-images", "4", "--size", "32",
                      "--world-identities", "12", "--latency-repeats", "1"])
    assert again["reconstruction"] == quality["reconstruction"]


def test_resumed_run_equals_the_uninterrupted_one(tiny_ipnet, tmp_path, monkeypatch):
    args = ["--model", str(tiny_ipnet), "--steps", "12", "--checkpoint-every", "5", "--eval-images", "0",
            "--size", "32", "--world-identities", "12", "--num-images", "16", "--batch-size", "4"]
    whole = ttd.main([*args, "--out", str(tmp_path / "a")])
    step_fn = ttd.distill_step

    def crash_at_8(tiny, teacher, optimizer, step, cfg):
        if step == 8:
            raise KeyboardInterrupt("killed")
        return step_fn(tiny, teacher, optimizer, step, cfg)

    monkeypatch.setattr(ttd, "distill_step", crash_at_8)
    with pytest.raises(KeyboardInterrupt):
        ttd.main([*args, "--out", str(tmp_path / "b")])
    assert json.loads((tmp_path / "b" / ttd.CHECKPOINT_DIR / "state.json").read_text())["step"] == 5
    monkeypatch.setattr(ttd, "distill_step", step_fn)
    with pytest.raises(ValueError, match="other settings .*lr"):  # a checkpoint of other settings is not resumed
        ttd.main([*args, "--out", str(tmp_path / "b"), "--lr", "0.01"])
    resumed = ttd.main([*args, "--out", str(tmp_path / "b")])
    events = [r.get("event") for r in map(json.loads, (resumed / "logs.jsonl").read_text().splitlines())]
    assert events.count("resume") == 1
    a, b = load_file(str(whole / WEIGHTS_FILE)), load_file(str(resumed / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_warms_up_then_decays():
    lrs = [ttd.lr_at(s, 100, 1.0, 10) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.05)


def test_folder_images_are_centre_cropped(tmp_path):
    from PIL import Image

    wide = np.zeros((32, 48, 3), np.uint8)
    wide[:, :8, 0] = wide[:, -8:, 0] = 255  # red margins that the centre crop removes
    wide[:, 8:-8, 2] = 200
    Image.fromarray(wide).save(tmp_path / "a.png")
    portrait_like_image(64).save(tmp_path / "b.jpg")
    images = ttd.training_images(ttd.DistillConfig(model="m", out="o", images=str(tmp_path), size=32))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[0], torch.from_numpy(wide[:, 8:-8]).permute(2, 0, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ttd.training_images(ttd.DistillConfig(model="m", out="o", images=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="not a folder"):
        ttd.training_images(ttd.DistillConfig(model="m", out="o", images=str(tmp_path / "missing")))


def test_bad_inputs_give_clear_errors(tiny_ipnet, tmp_path):
    tiny = build_tiny_decoder(tiny_vae())
    with pytest.raises(ValueError, match="4-channel latents, got 8"):
        tiny.decode(torch.randn(1, 8, 4, 4))
    pipe = load_pipe(tiny_ipnet)
    with pytest.raises(ValueError, match="16-channel latents but this VAE makes 4"):
        pipe.use_tiny_decoder(build_tiny_decoder(tiny_vae(latent_channels=16)))
    with pytest.raises(ValueError, match="upsamples 4x"):
        pipe.use_tiny_decoder(build_tiny_decoder(tiny_vae(block_out_channels=(8, 16, 16))))
    with pytest.raises(ValueError, match="TinyDecoder or a folder"):
        pipe.use_tiny_decoder(pipe.vae)
    assert pipe.tiny_decoder is None  # a refused decoder leaves the full one in place
    with pytest.raises(ModelNotAvailableError, match="train_tiny_decoder"):
        pipe.use_tiny_decoder(tmp_path / "missing")
    folder = save_tiny_decoder(tiny, tmp_path / "dec")
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelNotAvailableError, match="tiny_decoder.safetensors is missing"):
        load_tiny_decoder(folder)
    with pytest.raises(ValueError, match="safetensors only"):
        load_tiny_decoder(tmp_path / "decoder.pt")
    other = save_tiny_decoder(build_tiny_decoder(tiny_vae(), width=4), tmp_path / "other")
    (folder / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        load_tiny_decoder(folder)
    with pytest.raises(ValueError, match="power of 2"):
        TinyDecoderConfig(upsampling_factor=6)
    with pytest.raises(ValueError, match="num_blocks must hold 3"):
        TinyDecoderConfig(upsampling_factor=4, num_blocks=(3, 1))
    with pytest.raises(ValueError, match="not a VAE config"):
        build_tiny_decoder({"latent_channels": 4})


@pytest.mark.gpu
def test_tiny_decoder_follows_the_pipeline_to_cuda_half(tiny_ipnet):
    portrait = portrait_like_image(48, seed=3)
    pipe = load_pipe(tiny_ipnet).use_tiny_decoder(build_tiny_decoder(tiny_vae(), seed=0))
    ref = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    pipe.to("cuda", torch.float16)
    assert pipe.tiny_decoder.device.type == "cuda" and pipe.tiny_decoder.dtype == torch.float16
    out = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.abs(out - ref).mean() < 0.02


def test_tiny_vae_on_both_sides_round_trips_and_switches_back(tiny_ipnet, tmp_path):
    from diffusers import AutoencoderTiny

    from instantportrait.pipelines.tiny_vae import build_tiny_autoencoder

    portrait = portrait_like_image(48, seed=3)
    pipe = load_pipe(tiny_ipnet)
    plain = pipe(portrait, "add a hat", generator=gen(), output_type="np").images
    ae = build_tiny_autoencoder(pipe.vae, seed=0)
    assert isinstance(ae, AutoencoderTiny) and tuple(ae.config.num_encoder_blocks) == (1, 3, 3, 3)  # 8x, as TAESD
    ae.save_pretrained(tmp_path / "taesd-like")
    assert (tmp_path / "taesd-like" / "diffusion_pytorch_model.safetensors").is_file()
    fast = pipe.use_tiny_vae(ae)(portrait, "add a hat", generator=gen(), output_type="np").images
    pixels = torch.rand(1, 3, 16, 16, generator=gen()) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(pipe.encode_image(pixels) * pipe.vae.config.scaling_factor, ae.encoder(pixels))
    pipe.use_full_vae()
    np.testing.assert_array_equal(pipe(portrait, "add a hat", generator=gen(), output_type="np").images, plain)
    again = pipe.use_tiny_vae(str(tmp_path / "taesd-like"))(portrait, "add a hat", generator=gen(),
                                                              output_type="np").images
    np.testing.assert_allclose(again, fast, atol=1e-6)  # the folder loads to the same autoencoder
    assert np.abs(fast - plain).mean() > 1e-3
    pipe.use_full_decoder()  # the decoder alone goes back; the encoder stays tiny
    assert pipe.tiny_decoder is None and pipe._tiny_encoder is not None


def test_sd_config_gives_taesd_and_missing_taesd_fails_fast(tiny_ipnet, tmp_path):
    import time

    from diffusers import AutoencoderTiny

    from instantportrait.config import MODELS
    from instantportrait.pipelines.tiny_vae import build_tiny_autoencoder

    sd = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "out_channels": 3}
    ours, taesd = build_tiny_autoencoder(sd), AutoencoderTiny()
    assert {k: v for k, v in ours.config.items() if not k.startswith("_")} == {
        k: v for k, v in taesd.config.items() if not k.startswith("_")}
    assert MODELS["taesd"].repo_id == "madebyollin/taesd" and MODELS["taesd"].licence == "MIT"
    pipe = load_pipe(tiny_ipnet)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="download taesd"):
        pipe.use_tiny_vae("taesd")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="upsamples 4x"):
        pipe.use_tiny_vae(build_tiny_autoencoder(tiny_vae(block_out_channels=(8, 16, 16))))  # 4x for an 8x VAE
    with pytest.raises(ValueError, match="takes an AutoencoderTiny"):
        pipe.use_tiny_vae(pipe.vae)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        pipe.use_tiny_vae(tmp_path / "empty")
    assert pipe.tiny_decoder is None and pipe._tiny_encoder is None  # refused: nothing changed


def test_encoder_distillation_saves_an_autoencoder_tiny_and_measures_it(tiny_ipnet, tmp_path):
    from diffusers import AutoencoderTiny

    args = ["--model", str(tiny_ipnet), "--steps", "30", "--lr", "3e-3", "--warmup-steps", "5", "--eval-images", "4",
            "--size", "32", "--world-identities", "12", "--num-images", "32", "--batch-size", "8",
            "--latency-repeats", "1", "--checkpoint-every", "20"]
    out = ttd.main([*args, "--encoder", "--out", str(tmp_path / "pair")])
    quality = json.loads((out / ttd.QUALITY_FILE).read_text())
    enc = quality["encoder"]
    assert enc["latent_l1_to_full"] > 0 and enc["gflop"]["tiny"] > 0 and set(enc["latency_ms"]) == {"full", "tiny"}
    assert 0 < enc["tiny_encoder_tiny_decoder"]["l1_to_image"] < 1
    assert "Tiny encoder (both VAE sides" in (out / "README.md").read_text()
    ae = AutoencoderTiny.from_pretrained(out)  # loadable as diffusers' own class
    assert torch.equal(ae.decoder.layers[0].weight, load_tiny_decoder(out).decoder.layers[0].weight)
    pipe = load_pipe(tiny_ipnet).use_tiny_vae(out)
    assert pipe(portrait_like_image(32), "add a hat", generator=gen(), output_type="pt").images.shape == (1, 3, 32, 32)
    logs = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
    first, last = next(r for r in logs if "encoder_l1" in r), [r for r in logs if "encoder_l1" in r][-1]
    assert last["encoder_l1"] < first["encoder_l1"]  # the encoder learns
    again = ttd.main(["--model", str(tiny_ipnet), "--evaluate", str(out), "--eval-images", "4", "--size", "32",
                      "--world-identities", "12", "--latency-repeats", "1"])
    assert again["encoder"]["latent_l1_to_full"] == pytest.approx(enc["latent_l1_to_full"])
    # the decoder-only run is unchanged by the encoder's presence: the same decoder weights
    alone = ttd.main([*args, "--eval-images", "0", "--out", str(tmp_path / "alone")])
    a, b = load_file(str(alone / WEIGHTS_FILE)), load_file(str(out / WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)

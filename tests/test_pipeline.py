import json

import numpy as np
import PIL.Image
import pytest
import torch

from instantportrait import InstantPortraitPipeline, ipnet_from_instruct_pix2pix, widen_conv_in
from instantportrait.pipelines.ipnet import predicted_x0
from instantportrait.tiny.diffusion import tiny_unet


@pytest.fixture(scope="module")
def pipe(tiny_ipnet):
    p = InstantPortraitPipeline.from_pretrained(tiny_ipnet)
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("size", [(48, 48), (37, 53)])
def test_edit_returns_input_size(pipe, portrait, steps, size):
    img = portrait.resize(size)
    out = pipe(img, "make the background blue", num_inference_steps=steps, generator=gen()).images
    assert len(out) == 1 and isinstance(out[0], PIL.Image.Image)
    assert out[0].size == size and out[0].mode == "RGB"


def test_same_seed_same_image_other_seed_differs(pipe, portrait):
    a = pipe(portrait, "add a hat", generator=gen(1), output_type="np").images
    b = pipe(portrait, "add a hat", generator=gen(1), output_type="np").images
    c = pipe(portrait, "add a hat", generator=gen(2), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_batch_matches_single_with_per_sample_generators(pipe, portrait):
    other = portrait.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    batch = pipe([portrait, other], ["add a hat", "add glasses"], generator=[gen(5), gen(6)],
                 output_type="np").images
    single = pipe(other, "add glasses", generator=gen(6), output_type="np").images
    assert batch.shape == (2, 48, 48, 3)
    np.testing.assert_allclose(batch[1], single[0], atol=1e-5)


def test_one_prompt_broadcasts_over_images(pipe, portrait):
    out = pipe([portrait, portrait], "add a hat", generator=[gen(0), gen(0)], output_type="np").images
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_two_steps_differ_from_one(pipe, portrait):
    one = pipe(portrait, "add a hat", generator=gen(0), output_type="np").images
    two = pipe(portrait, "add a hat", num_inference_steps=2, generator=gen(0), output_type="np").images
    assert np.abs(one - two).max() > 1e-4


def test_step_two_edits_step_ones_output(pipe, portrait, monkeypatch):
    """Step 2's source is step 1's output: swapping step 1's output (same seed, so the same step-2 noise) changes
    the result, and step 2 sees exactly that output as its source latent."""
    real = pipe.predict_clean_latents
    seen = []

    def swapped(start, source_latents, prompt_embeds, timestep=None):
        out = real(start, source_latents, prompt_embeds, timestep)
        seen.append((source_latents, out))
        return out.flip(-1) if len(seen) == 1 and swap else out

    monkeypatch.setattr(pipe, "predict_clean_latents", swapped)
    results = {}
    for swap in (False, True):
        seen.clear()
        results[swap] = pipe(portrait, "add a hat", num_inference_steps=2, generator=gen(0),
                             output_type="latent").images
        first_out = seen[0][1].flip(-1) if swap else seen[0][1]
        torch.testing.assert_close(seen[1][0], first_out / pipe.vae.config.scaling_factor)
    assert (results[False] - results[True]).abs().max() > 1e-4


def test_v_prediction_reads_the_output_as_v(tiny_ip2p, portrait):
    from diffusers import DDPMScheduler

    p = ipnet_from_instruct_pix2pix(tiny_ip2p)
    p.register_modules(scheduler=DDPMScheduler.from_config(p.scheduler.config, prediction_type="v_prediction"))
    lat = p(portrait, "hat", generator=gen(0), output_type="latent").images
    with torch.no_grad():
        pixels = p.image_processor.preprocess(portrait, height=48, width=48)
        src = p.encode_image(pixels)
        start = p.start_latents(src, gen(0))
        text = p.encode_prompt(["hat"])
        v = p.unet(torch.cat([start, src], 1), torch.tensor([999]), encoder_hidden_states=text).sample
    a = p.alpha_bar(999, torch.device("cpu"))
    torch.testing.assert_close(lat, a.sqrt() * start - (1 - a).sqrt() * v, atol=1e-5, rtol=1e-5)


def test_output_types(pipe, portrait):
    pt = pipe(portrait, "hat", generator=gen(0), output_type="pt").images
    assert pt.shape == (1, 3, 48, 48)  # (no range check: postprocess clamps to [0, 1] before returning)
    lat = pipe(portrait, "hat", generator=gen(0), output_type="latent").images
    f = pipe.vae_scale_factor
    assert lat.shape == (1, 4, 48 // f, 48 // f)
    np_out = pipe(portrait, "hat", generator=gen(0), output_type="np").images
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_out, atol=1e-6)


def test_prompt_embeds_equal_prompt(pipe, portrait):
    embeds = pipe.encode_prompt(["add a hat"])
    a = pipe(portrait, prompt_embeds=embeds, generator=gen(0), output_type="np").images
    b = pipe(portrait, "add a hat", generator=gen(0), output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": None, "prompt": "hat"}, "`image` is required"),
        ({"image": [], "prompt": "hat"}, "empty list"),
        ({"image": "face.png", "prompt": "hat"}, "expected PIL"),
        ({"prompt": None}, "`prompt` is required"),
        ({"prompt": "   "}, "empty"),
        ({"prompt": 3}, "string or a list of strings"),
        ({"prompt": ["a", "b", "c"], "image": "two"}, "batch size mismatch"),
        ({"num_inference_steps": 3}, "must be one of"),
        ({"num_inference_steps": 0}, "must be one of"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"image": "mixed", "prompt": "hat"}, "same size"),
    ],
)
def test_each_bad_input_has_its_error(pipe, portrait, kwargs, match):
    call = {"image": portrait, "prompt": "hat", **kwargs}
    if call["image"] == "two":
        call["image"] = [portrait, portrait]
    if call["image"] == "mixed":
        call["image"] = [portrait, portrait.resize((40, 40))]
    with pytest.raises(ValueError, match=match):
        pipe(**call)


def test_prompt_and_embeds_together_rejected(pipe, portrait):
    with pytest.raises(ValueError, match="not both"):
        pipe(portrait, "hat", prompt_embeds=pipe.encode_prompt(["hat"]))


def test_save_load_round_trip_gives_same_images(pipe, portrait, tmp_path):
    pipe.save_pretrained(tmp_path / "ipnet", card_info={"name": "round trip", "training": {"lr": 1e-5}})
    files = {p.name for p in (tmp_path / "ipnet").iterdir()}
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "README.md"} <= files
    assert not list((tmp_path / "ipnet").rglob("*.bin")), "weights must be safetensors"
    assert list((tmp_path / "ipnet").rglob("*.safetensors"))
    index = json.loads((tmp_path / "ipnet" / "model_index.json").read_text())
    assert index["timestep"] == 999 and index["start"] == "noise"
    loaded = InstantPortraitPipeline.from_pretrained(tmp_path / "ipnet")
    a = pipe(portrait, "hat", generator=gen(3), output_type="np").images
    b = loaded(portrait, "hat", generator=gen(3), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert loaded.card_info["name"] == "round trip"
    card = (tmp_path / "ipnet" / "README.md").read_text()
    assert card.startswith("---\n") and "non-commercial" in card and "lr: 1.0e-05" in card


def test_config_values_survive_round_trip(tiny_ip2p, tmp_path):
    p = ipnet_from_instruct_pix2pix(tiny_ip2p, timestep=500, start="source")
    p.save_pretrained(tmp_path / "p")
    q = InstantPortraitPipeline.from_pretrained(tmp_path / "p")
    assert (q.config.timestep, q.config.start) == (500, "source")


def test_source_start_depends_on_source(tiny_ip2p, portrait):
    p = ipnet_from_instruct_pix2pix(tiny_ip2p, timestep=200, start="source")
    lat = torch.zeros(1, 4, 6, 6)
    a = p.start_latents(lat, gen(0))
    b = p.start_latents(lat + 1, gen(0))
    alpha = p.alpha_bar(200, torch.device("cpu"))
    expected = alpha.sqrt() * p.vae.config.scaling_factor
    torch.testing.assert_close((b - a).mean(), expected, rtol=1e-4, atol=1e-5)


def test_predicted_x0_inverts_forward_process():
    x0 = torch.randn(2, 4, 3, 3)
    eps = torch.randn_like(x0)
    a = torch.tensor(0.3)
    zt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(predicted_x0(eps, zt, a, "epsilon"), x0)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(predicted_x0(v, zt, a, "v_prediction"), x0)
    torch.testing.assert_close(predicted_x0(x0, zt, a, "sample"), x0)
    with pytest.raises(ValueError):
        predicted_x0(x0, zt, a, "flow")


def test_widen_conv_in_keeps_text_to_image_behaviour():
    unet = tiny_unet(in_channels=4)
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([10])
    e = torch.randn(1, 77, 32)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=e).sample
        widen_conv_in(unet, 8)
        after = unet(torch.cat([x, torch.randn_like(x)], 1), t, encoder_hidden_states=e).sample
    assert unet.config.in_channels == 8 and unet.conv_in.in_channels == 8
    torch.testing.assert_close(before, after)


def test_pipeline_refuses_4_channel_unet(tiny_ip2p):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    with pytest.raises(ValueError, match="widen_conv_in"):
        InstantPortraitPipeline(
            vae=AutoencoderKL.from_pretrained(tiny_ip2p, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(tiny_ip2p, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(tiny_ip2p, subfolder="tokenizer"),
            unet=tiny_unet(in_channels=4), scheduler=DDPMScheduler())

"""python -m train.demo --out instantportrait/demo_models [--seed 0] [--quick]

Train the offline demo editors of the synthetic portrait world with the project's real trainers:

1. export paired edits of the world's *train* identities (64 px, ``World.export_pairs``);
2. build a world-sized InstructPix2Pix-format base: a small ``AutoencoderKL`` (4x downscale, 16x16x4 latents)
   trained briefly as an autoencoder on the exported images (its ``scaling_factor`` fitted to unit-variance
   latents, as SD's 0.18215 was), a tokenizer whose vocabulary holds every word of the world's instructions as one
   token, and a tiny ``CLIPTextModel`` with *frozen random* weights: a fixed, injective (distinct tokens -> distinct
   embeddings, checked) map from instruction to token embeddings that the UNet learns to read, standing in for a
   pre-trained text encoder; and a freshly initialised 8-channel UNet;
3. ``train_idenet.train`` with ``train/configs/demo_idenet.yaml`` (ε loss + the annealing identity loss through the
   demo face pack's recognition ONNX when ``<out>/face_pack`` holds one, else ``identity_weighting: none``);
4. ``train_ipnet.train`` with ``train/configs/demo_ipnet.yaml`` (IPNet distilled from that IDE-Net);
5. copy both into ``<out>/idenet`` and ``<out>/ipnet`` (fp16 safetensors; diffusers upcasts on load when asked for
   float32) with toy-model cards, evaluate on the held-out *test* identities, and ship them only when IPNet's
   one-step L1 to the rendered target is at least ``--ship-bar`` (20%) below the unchanged source's.

``python -m train.demo --evaluate instantportrait/demo_models`` prints the per-category numbers of shipped models.
Everything is deterministic given ``--seed`` (data, initialisation, trainer draws).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.config import IDENetConfig, IPNetConfig, load_config

CONFIG_DIR = Path(__file__).parent / "configs"
IMAGE_SIZE = 64
SHIP_BAR = 0.20


@dataclass
class DemoConfig:
    """Sizes of one demo run (the trainers' own settings live in the YAML configs)."""

    seed: int = 0
    num_identities: int = 120
    train_pairs: int = 800
    image_size: int = IMAGE_SIZE
    vae_steps: int = 300
    vae_batch: int = 8
    vae_lr: float = 3e-3
    idenet_steps: int | None = None  # None: the YAML's max_train_steps
    ipnet_steps: int | None = None
    eval_pairs: int = 100

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        return cls(seed=seed, num_identities=12, train_pairs=16, vae_steps=3, vae_batch=4, idenet_steps=2,
                   ipnet_steps=1, eval_pairs=6)


# ---------------------------------------------------------------------------------------------------- components
def world_words(manifest: Path) -> tuple[str, ...]:
    """Every alphabetic lower-case word of the exported instructions and paraphrases (sorted: a stable vocabulary)."""
    words: set[str] = set()
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        for text in [row["instruction"], *row.get("paraphrases", [])]:
            words.update(re.findall(r"[a-z]+", text.lower()))  # CLIP's tokenizer splits digits one by one
    return tuple(sorted(words))


def load_pixels(folder: Path, size: int) -> torch.Tensor:
    """All source and target images of a pairs folder as (N, 3, size, size) in [-1, 1]."""
    from PIL import Image

    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    paths = sorted({r["source"] for r in rows}) + sorted({r["target"] for r in rows})
    arrays = [np.asarray(Image.open(folder / p).convert("RGB").resize((size, size)), dtype=np.float32) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0  # (N, 3, H, W)


def train_vae(pixels: torch.Tensor, cfg: DemoConfig) -> Any:
    """A small AutoencoderKL (4x downscale, 4 latent channels) trained as an autoencoder: L1 + MSE reconstruction
    of the posterior mean plus a tiny KL; ``scaling_factor`` = 1 / std of the latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=cfg.image_size)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    vae.train()
    for step in range(cfg.vae_steps):
        idx = torch.randint(0, pixels.shape[0], (cfg.vae_batch,), generator=gen)
        x = pixels[idx]  # (B, 3, H, W)
        post = vae.encode(x).latent_dist
        z = post.mean + 0.1 * post.std * torch.randn(post.mean.shape, generator=gen)  # (B, 4, H/4, W/4)
        rec = vae.decode(z).sample  # (B, 3, H, W)
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            print(f"[vae] step {step} loss {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        std = float(torch.cat([vae.encode(pixels[i:i + 64]).latent_dist.mode()
                               for i in range(0, pixels.shape[0], 64)]).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def build_base(folder: Path, data: Path, cfg: DemoConfig) -> Path:
    """Write the world's InstructPix2Pix-format base checkpoint (trained VAE, frozen random text encoder, new UNet)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    from instantportrait.testing import tiny_clip_tokenizer, tiny_scheduler, tiny_text_encoder

    words = world_words(data / "manifest.jsonl")
    tokenizer = tiny_clip_tokenizer(folder.parent / "tokenizer_src", words=words)
    # Left-to-right merges of different words can interact, so some words stay a few pieces; byte-level BPE is
    # lossless either way, so distinct instructions still give distinct token sequences.
    single = sum(len(tokenizer.tokenize(w)) == 1 for w in words)
    print(f"[tokenizer] {len(words)} world words, {single} of them single tokens, vocabulary {len(tokenizer)}")
    text_encoder = tiny_text_encoder(len(tokenizer), hidden_size=64, seed=cfg.seed)
    emb = text_encoder.get_input_embeddings().weight  # (V, 64)
    if torch.unique(emb.detach(), dim=0).shape[0] != emb.shape[0]:
        raise RuntimeError("two tokens share an embedding: the text encoder would not be injective")
    t0 = time.perf_counter()
    vae = train_vae(load_pixels(data, cfg.image_size), cfg)
    print(f"[vae] trained in {time.perf_counter() - t0:.1f} s", flush=True)
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size // 4, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=16,
        norm_num_groups=16)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                  scheduler=tiny_scheduler(), safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def find_recognition_onnx(face_pack: Path) -> Path | None:
    """The recognition model of a face pack (an ONNX whose input is a square >= 112 image), or None."""
    if not face_pack.is_dir():
        return None
    import onnx

    for f in sorted(face_pack.glob("*.onnx")):
        model = onnx.load(str(f), load_external_data=False)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        if len(model.graph.output) == 1 and len(dims) == 4 and dims[2] == dims[3] and dims[2] >= 112:
            return f
    return None


# ---------------------------------------------------------------------------------------------------- packaging
def to_fp16_folder(src: Path, dst: Path) -> None:
    """Copy a pipeline folder without checkpoints/logs, storing every safetensors file in fp16."""
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint-*", "logs*", "*.jsonl", "validation*"))
    for f in dst.rglob("*.safetensors"):
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(f).items()}
        save_file(tensors, f, metadata={"format": "pt"})


TOY_CARD = """# {title} — TOY demo model (synthetic data)

**This is a toy model.** It was trained in minutes on CPU by `python -m train.demo` on {pairs} procedurally rendered
64x64 portraits of the InstantPortrait synthetic world (`instantportrait/synthetic/`, seed {seed}, train identities
only), with the project's own trainer ({trainer}). It exists so the app, CLI, benchmark and tests show *learned*
edits on a machine with no network. It is not a real portrait editor.

What it can do: apply the synthetic world's edits (accessories, facial hair, clothing, background, era/style)
to synthetic-world portraits at 64 px, from instructions phrased in the world's vocabulary.
What it cannot do: edit real photographs, understand words outside the world's vocabulary (unknown words become
byte tokens it never saw), produce detail beyond 64 px, or preserve a real person's identity. Its text encoder is a
frozen *random* tiny CLIP text model (a fixed injective embedding the UNet learned to read), its VAE a 4x
autoencoder trained on the world's images only. Weights are stored in fp16 (load with `dtype=torch.float32` to
upcast). Identity loss: {identity}.

Held-out test identities ({eval_pairs} pairs): {numbers}
"""


def write_card(folder: Path, title: str, trainer: str, cfg: DemoConfig, identity: str, numbers: str) -> None:
    text = TOY_CARD.format(title=title, pairs=cfg.train_pairs, seed=cfg.seed, trainer=trainer, identity=identity,
                           eval_pairs=cfg.eval_pairs, numbers=numbers)
    old = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
    (folder / "README.md").write_text(text + ("\n---\n\n## Trainer's card\n\n" + old if old else ""))


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate(folder: Path, *, seed: int = 0, num_identities: int = 120, n: int = 100, size: int = IMAGE_SIZE,
             methods: Sequence[str] = ("ipnet", "ipnet-2step"), idenet_steps: int = 20) -> dict[str, Any]:
    """L1 (pixels in [0, 1]) to the rendered target on ``n`` test-split pairs for the shipped editors vs the
    unchanged source, per category, plus face-region L1 to the source and one-edit CPU latency."""
    from instantportrait.methods import get_editor
    from instantportrait.methods.base import EditSettings
    from instantportrait.synthetic import World

    world = World(seed, num_identities, size=size)
    samples = list(world.samples("test", n))

    def arr(img: Any) -> np.ndarray:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0

    def face_l1(a: np.ndarray, b: np.ndarray, bbox: Sequence[float]) -> float:
        x0, y0, x1, y1 = (int(round(v)) for v in bbox)
        x0, y0 = max(x0, 0), max(y0, 0)
        return float(np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean())

    result: dict[str, Any] = {"n": n, "size": size, "methods": {}}
    rows_src = [float(np.abs(arr(s.source) - arr(s.target)).mean()) for s in samples]
    cats = sorted({s.category for s in samples})

    def per_cat(vals: list[float]) -> dict[str, float]:
        out = {c: float(np.mean([v for v, s in zip(vals, samples) if s.category == c])) for c in cats}
        out["all"] = float(np.mean(vals))
        return out

    result["source"] = per_cat(rows_src)
    for name in methods:
        model = folder / ("idenet" if name == "idenet" else "ipnet")
        editor = get_editor(name, model=str(model), resolution=size, dtype=torch.float32)
        settings = EditSettings(num_inference_steps=idenet_steps) if name == "idenet" else None
        outs = []
        for i in range(0, n, 16):
            chunk = samples[i:i + 16]
            outs += editor.edit([s.source for s in chunk], [s.instruction for s in chunk], seed=0, settings=settings)
        l1 = [float(np.abs(arr(o) - arr(s.target)).mean()) for o, s in zip(outs, samples)]
        face = [face_l1(arr(o), arr(s.source), s.bbox) for o, s in zip(outs, samples)]
        t0 = time.perf_counter()
        for _ in range(3):
            editor.edit([samples[0].source], [samples[0].instruction], seed=0, settings=settings)
        latency = (time.perf_counter() - t0) / 3
        result["methods"][name] = {"l1_to_target": per_cat(l1), "face_l1_to_source": float(np.mean(face)),
                                   "latency_s_64px": latency}
        editor.unload()
    return result


def format_eval(res: dict[str, Any]) -> str:
    cats = list(res["source"])
    lines = ["| method | " + " | ".join(f"L1→target {c}" for c in cats) + " | face L1→source | CPU s/edit |",
             "|---" * (len(cats) + 3) + "|",
             "| source (no edit) | " + " | ".join(f"{res['source'][c]:.4f}" for c in cats) + " | 0 | – |"]
    for name, m in res["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m['l1_to_target'][c]:.4f}" for c in cats)
                     + f" | {m['face_l1_to_source']:.4f} | {m['latency_s_64px']:.3f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- the run
def run(out: Path, cfg: DemoConfig, *, work: Path | None = None, ship_bar: float = SHIP_BAR,
        force_ship: bool = False) -> dict[str, Any]:
    """The whole demo run; returns the evaluation and whether the models were shipped into ``out``."""
    from instantportrait.synthetic import World
    from train import train_idenet, train_ipnet

    work = Path(work) if work else out / ".demo_work"
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    world = World(cfg.seed, cfg.num_identities, size=cfg.image_size)
    data = work / "pairs"
    world.export_pairs(data, "train", cfg.train_pairs, overwrite=True)
    times["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = build_base(work / "base", data, cfg)
    times["base"] = time.perf_counter() - t0

    rec = find_recognition_onnx(out / "face_pack")
    ide_over: dict[str, Any] = {"model": str(base), "dataset": str(data), "output_dir": str(work / "idenet"),
                                "seed": cfg.seed, "resolution": cfg.image_size}
    if rec is not None:
        ide_over.update(identity_model=str(rec), identity_weighting="annealing")
        identity = f"annealing (L_aid) through `{rec.name}` of the demo face pack"
    else:
        ide_over.update(identity_model="none", identity_weighting="none")
        identity = "none (the demo face pack did not exist when these were trained)"
    if cfg.idenet_steps:
        ide_over.update(max_train_steps=cfg.idenet_steps)
    icfg = load_config(IDENetConfig, CONFIG_DIR / "demo_idenet.yaml", ide_over)
    t0 = time.perf_counter()
    idenet = train_idenet.train(icfg)
    times["idenet"] = time.perf_counter() - t0
    print(f"[idenet] {icfg.max_train_steps} steps in {times['idenet']:.1f} s", flush=True)

    ip_over: dict[str, Any] = {"model": str(idenet), "dataset": str(data), "output_dir": str(work / "ipnet"),
                               "seed": cfg.seed, "resolution": cfg.image_size}
    ip_over["identity_model"] = str(rec) if rec is not None else "none"
    if rec is None:
        ip_over["weights.identity"] = 0.0
    pcfg = load_config(IPNetConfig, CONFIG_DIR / "demo_ipnet.yaml", ip_over)
    if cfg.ipnet_steps:
        pcfg = replace(pcfg, max_train_steps=cfg.ipnet_steps)
    t0 = time.perf_counter()
    ipnet = train_ipnet.train(pcfg)
    times["ipnet"] = time.perf_counter() - t0
    print(f"[ipnet] {pcfg.max_train_steps} steps in {times['ipnet']:.1f} s", flush=True)

    staged = work / "staged"
    to_fp16_folder(idenet, staged / "idenet")
    to_fp16_folder(ipnet, staged / "ipnet")
    t0 = time.perf_counter()
    res = evaluate(staged, seed=cfg.seed, num_identities=cfg.num_identities, n=cfg.eval_pairs, size=cfg.image_size)
    times["evaluate"] = time.perf_counter() - t0
    res["times_s"] = times
    src, one = res["source"]["all"], res["methods"]["ipnet"]["l1_to_target"]["all"]
    res["improvement"] = 1.0 - one / src
    res["shipped"] = bool(force_ship or res["improvement"] >= ship_bar)
    numbers = format_eval(res)
    print(numbers, flush=True)
    print(json.dumps({"times_s": times, "improvement": res["improvement"]}), flush=True)
    if res["shipped"]:
        for name, trainer in (("idenet", "train/train_idenet.py, train/configs/demo_idenet.yaml"),
                              ("ipnet", "train/train_ipnet.py, train/configs/demo_ipnet.yaml")):
            write_card(staged / name, "IDE-Net" if name == "idenet" else "IPNet", trainer, cfg, identity,
                       "\n\n" + numbers + "\n")
            if (out / name).exists():
                shutil.rmtree(out / name)
            shutil.copytree(staged / name, out / name)
        (out / "demo_editors_eval.json").write_text(json.dumps(res, indent=2) + "\n")
    else:
        print(f"NOT shipped: IPNet 1-step is {100 * res['improvement']:.1f}% below the source's L1 "
              f"(bar {100 * ship_bar:.0f}%)", flush=True)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("instantportrait/demo_models"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes and a handful of steps (tests)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: <out>/.demo_work)")
    p.add_argument("--ship-bar", type=float, default=SHIP_BAR)
    p.add_argument("--force-ship", action="store_true", help="write the models even below the bar (tests)")
    p.add_argument("--evaluate", type=Path, default=None, metavar="FOLDER",
                   help="only evaluate the shipped models in FOLDER (ipnet/, idenet/) on test identities")
    p.add_argument("--eval-pairs", type=int, default=None)
    p.add_argument("--with-idenet", action="store_true", help="--evaluate: also IDE-Net (20 steps, slow)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.evaluate is not None:
        cfg = DemoConfig(seed=args.seed)
        methods = ("ipnet", "ipnet-2step") + (("idenet",) if args.with_idenet else ())
        res = evaluate(args.evaluate, seed=cfg.seed, num_identities=cfg.num_identities,
                       n=args.eval_pairs or cfg.eval_pairs, methods=methods)
        print(format_eval(res))
        return res
    cfg = DemoConfig.quick(args.seed) if args.quick else DemoConfig(seed=args.seed)
    if args.eval_pairs:
        cfg = replace(cfg, eval_pairs=args.eval_pairs)
    return run(args.out, cfg, work=args.work, ship_bar=args.ship_bar, force_ship=args.force_ship)


if __name__ == "__main__":
    main()

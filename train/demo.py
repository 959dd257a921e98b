"""python -m train.demo --out instantportrait/demo/models [--seed 0] [--quick]

Train the offline demo models of the synthetic portrait world with the project's real trainers:

1. export paired edits of the world's *train* identities (64 px, ``World.export_pairs``);
2. build a world-sized InstructPix2Pix-format base: a small ``AutoencoderKL`` (2x downscale, 32x32x4 latents; a 4x
   one loses the 2-3 px eyes and mouths that make a synthetic identity: its reconstructions scored 0.49 identity
   cosine against the source, this one 0.82) trained as an autoencoder on the exported images, face boxes weighted
   ``vae_face_weight`` times (its ``scaling_factor`` fitted to unit-variance latents, as SD's 0.18215 was); a
   tokenizer whose vocabulary holds every word of the world's instructions as one token; a tiny ``CLIPTextModel``
   with *frozen random* weights: a fixed, injective (distinct tokens -> distinct embeddings, checked) map from
   instruction to token embeddings that the UNet learns to read, standing in for a pre-trained text encoder; and a
   freshly initialised 8-channel UNet (attention at its 8x8 level only);
3. when ``<out>`` holds no demo face pack and CLIP yet, train them there first (``train.train_scorers``, ~7.5
   min); then ``train_idenet.train`` with ``train/configs/demo_idenet.yaml`` (ε loss + the annealing identity loss
   through the demo face pack's recognition ONNX when ``<out>/face_pack`` holds one, else
   ``identity_weighting: none``);
4. ``train_ipnet.train`` twice: a warm-up with ``train/configs/demo_ipnet_warmup.yaml`` (the one-step student,
   initialised from that IDE-Net, regressed onto the pairs' rendered targets: ``L_pair`` only, cheap steps), then
   ``train/configs/demo_ipnet.yaml`` from the warmed-up student: ``L_adv`` (a discriminator on the frozen IDE-Net's
   features), identity and ``L_pair`` (latent L2 onto the pair's rendered target; not a paper term: the toy
   teacher's own samples are further from the targets than the source, so regressing onto them cannot pass the L1
   bar, see the configs' headers and BENCHMARKS.md §5); with ``--recipe paper`` instead, once with
   ``train/configs/demo_ipnet_paper.yaml``: the paper's objectives only (``L_adv`` + ``L_distill`` from the
   DDIM-inversion teacher path + ``L_triplet`` + identity), the student a copy of the IDE-Net;
5. copy both into ``<out>/idenet`` and ``<out>/ipnet`` (fp16 safetensors; diffusers upcasts on load when asked for
   float32) with toy-model cards, evaluate on the held-out *test* identities, and ship them only when IPNet's
   one-step L1 to the rendered target is at least ``--ship-bar`` (20%) below the unchanged source's.

Each stage records ``<work>/<stage>.done.json`` when it finishes; a rerun with the same settings reuses it, so an
interrupted run continues at the first unfinished stage. ``python -m train.demo --evaluate instantportrait/demo/models``
scores shipped models on 200 held-out pairs and prints issue #4's acceptance checks. Everything is deterministic
given ``--seed`` (data, initialisation, trainer draws).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.config import IDENetConfig, IPNetConfig, config_to_dict, load_config

CONFIG_DIR = Path(__file__).parent / "configs"
IMAGE_SIZE = 64
SHIP_BAR = 0.20
RECIPE_CONFIGS = {"paper": "demo_ipnet_paper.yaml", "pair": "demo_ipnet.yaml"}
SCORER_CLIP = Path("clip") / "demo_clip.safetensors"  # where train.train_scorers writes the demo CLIP under <out>


@dataclass
class DemoConfig:
    """Sizes of one demo run (the trainers' own settings live in the YAML configs)."""

    seed: int = 0
    num_identities: int = 120
    train_pairs: int = 4000
    image_size: int = IMAGE_SIZE
    vae_steps: int = 1200
    vae_batch: int = 8
    vae_lr: float = 2e-3
    vae_channels: tuple[int, ...] = (32, 64)  # two levels: 2x downscale
    vae_face_weight: float = 2.0
    prediction_type: str = "epsilon"  # or "v_prediction": the base scheduler's (teachers compared: BENCHMARKS.md §5)
    attention_levels: int = 1  # UNet levels with cross-attention, coarsest first: 1 = 8x8 only, 2 = also 16x16
    idenet_steps: int | None = None  # None: the YAML's max_train_steps
    warmup_steps: int | None = None  # IPNet stage 1 (L_pair only)
    ipnet_steps: int | None = None  # IPNet stage 2 (the full recipe)
    eval_pairs: int = 200
    recipe: str = "pair"  # the IPNet objective: "paper" (the paper's terms only) or "pair" (L_pair warm-up + recipe)
    scorers: bool = True  # train the demo face pack and CLIP into <out> first when it holds none

    @classmethod
    def quick(cls, seed: int = 0) -> DemoConfig:
        return cls(seed=seed, num_identities=12, train_pairs=16, vae_steps=3, vae_batch=4, idenet_steps=2,
                   warmup_steps=1, ipnet_steps=1, eval_pairs=6)


# ---------------------------------------------------------------------------------------------------- components
def world_words(manifest: Path) -> tuple[str, ...]:
    """Every alphabetic lower-case word of the exported instructions and paraphrases (sorted: a stable vocabulary)."""
    words: set[str] = set()
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        for text in [row["instruction"], *row.get("paraphrases", [])]:
            words.update(re.findall(r"[a-z]+", text.lower()))  # CLIP's tokenizer splits digits one by one
    return tuple(sorted(words))


def load_pixels(folder: Path, size: int, face_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """All source and target images of a pairs folder as (N, 3, size, size) in [-1, 1], and per-pixel loss weights
    (N, 1, size, size): ``face_weight`` inside the source's face box (targets share their source's pose), else 1."""
    from PIL import Image

    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    boxes = {r["source"]: r.get("source_bbox") for r in rows}
    boxes.update({r["target"]: r.get("source_bbox") for r in rows})
    paths = sorted({r["source"] for r in rows}) + sorted({r["target"] for r in rows})
    arrays = [np.asarray(Image.open(folder / p).convert("RGB").resize((size, size)), dtype=np.float32) for p in paths]
    weights = torch.ones(len(paths), 1, size, size)
    for i, p in enumerate(paths):
        if boxes[p] and face_weight != 1.0:
            scale = size / float(rows[0].get("width", size))
            x0, y0, x1, y1 = (int(round(v * scale)) for v in boxes[p])
            weights[i, :, max(y0, 0):y1, max(x0, 0):x1] = face_weight
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0, weights


def train_vae(pixels: torch.Tensor, weights: torch.Tensor, cfg: DemoConfig) -> Any:
    """A small AutoencoderKL (``2 ** (len(vae_channels) - 1)``x downscale, 4 latent channels) trained as an
    autoencoder: weighted L1 + MSE reconstruction of a slightly noised posterior mean plus a tiny KL;
    ``scaling_factor`` = 1 / std of the latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    levels = len(cfg.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(cfg.vae_channels),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=cfg.image_size)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vae_lr, total_steps=max(cfg.vae_steps, 1),
                                                pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    vae.train()
    for step in range(cfg.vae_steps):
        idx = torch.randint(0, pixels.shape[0], (cfg.vae_batch,), generator=gen)
        x, w = pixels[idx], weights[idx]  # (B, 3, H, W), (B, 1, H, W)
        post = vae.encode(x).latent_dist
        z = post.mean + 0.1 * post.std * torch.randn(post.mean.shape, generator=gen)  # (B, 4, h, w)
        rec = vae.decode(z).sample  # (B, 3, H, W)
        loss = ((rec - x).abs() * w).mean() + ((rec - x).pow(2) * w).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
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
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from instantportrait.tiny.diffusion import tiny_clip_tokenizer, tiny_scheduler, tiny_text_encoder, world_unet

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
    vae = train_vae(*load_pixels(data, cfg.image_size, cfg.vae_face_weight), cfg)
    print(f"[vae] trained in {time.perf_counter() - t0:.1f} s", flush=True)
    torch.manual_seed(cfg.seed)
    unet = world_unet(cfg.image_size // 2 ** (len(cfg.vae_channels) - 1), cfg.attention_levels)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                  scheduler=tiny_scheduler(cfg.prediction_type), safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def train_demo_scorers(out: Path, cfg: DemoConfig) -> float:
    """Train the demo face pack and CLIP into ``out`` (``train.train_scorers``, its default sizes, or its smoke sizes
    for a quick run); returns the seconds it took. The scorers pin torch to one thread and deterministic
    algorithms; both settings are restored for the editors' trainers."""
    from train.train_scorers import ScorerConfig, train_scorers

    scfg = ScorerConfig(seed=cfg.seed, world_seed=cfg.seed)
    if cfg.num_identities < scfg.num_identities // 2:  # a quick run's tiny world
        scfg = scfg.quick()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    t0 = time.perf_counter()
    try:
        train_scorers(out, scfg)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    seconds = time.perf_counter() - t0
    print(f"[scorers] done in {seconds:.1f} s", flush=True)
    return seconds


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


def ipnet_recipe(cfg: IPNetConfig) -> str:
    """The IPNet objective in words, for the model card (``L_pair`` flagged as not one of the paper's terms)."""
    names = {"adv": "L_adv", "distill": "L_distill", "sds": "L_sds", "triplet": "L_triplet", "identity": "identity",
             "pair": "L_pair (latent L2 onto the rendered target; not a paper term, see the config's header)"}
    return " + ".join(f"{w:g}·{names[k]}" for k, w in cfg.weights.active().items())


def write_card(folder: Path, title: str, trainer: str, cfg: DemoConfig, identity: str, numbers: str,
               recipe: str = "") -> None:
    """The toy card (``hub.cards.model_card``, kind ``toy-demo``) on top of the card the trainer wrote."""
    from instantportrait.hub.cards import model_card

    text = model_card({"kind": "toy-demo", "name": title, "train_pairs": cfg.train_pairs, "seed": cfg.seed,
                       "trainer": trainer, "training": f"Identity loss: {identity}. {recipe}".strip(),
                       "metrics": f"Held-out test identities ({cfg.eval_pairs} pairs): {numbers}"})
    old = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
    (folder / "README.md").write_text(text + ("\n---\n\n## Trainer's card\n\n" + old if old else ""))


# ---------------------------------------------------------------------------------------------------- evaluation
ACCEPT = {"edit_present": 0.80, "identity": 0.70}  # issue #4's bars for IPNet 1-step (and L1 below the source's)


@dataclass
class DemoScorers:
    """The shipped toy scorers as one :class:`~instantportrait.eval.scorer.Scorer` (the demo face pack for identity
    cosine, the demo CLIP for "is the edit present?"), resizing images to 128 px first (the scorers were trained on
    128-px renders)."""

    scorer: Any  # instantportrait.eval.scorer.Scorer

    @classmethod
    def load(cls, face_pack: str | Path | None = None, clip: str | Path | None = None) -> DemoScorers:
        from instantportrait.eval.scorer import Scorer

        return cls(Scorer.demo(face_pack, clip))

    def score(self, images: Sequence[Any], samples: Sequence[Any]) -> dict[str, list[float | None]]:
        """Per image: identity cosine to its sample's source (None: no face found in either), whether the
        demo CLIP finds the edit present (CLIP-T with the target's caption above CLIP-T with the source's
        caption), and CLIP-T with the target caption."""
        ident = self.scorer.identities([s.source for s in samples], images)
        t_tgt = self.scorer.clip_t_all(images, [s.target_caption for s in samples])  # (n,)
        t_src = self.scorer.clip_t_all(images, [s.source_caption for s in samples])  # (n,)
        return {"identity": ident, "edit_present": [float(a > b) for a, b in zip(t_tgt, t_src)],
                "clip_t": [float(v) for v in t_tgt]}

    def different_identity(self, samples: Sequence[Any]) -> float:
        """Mean identity cosine between sources of *different* people (the scale's lower reference)."""
        from instantportrait.eval.metrics import cosine

        faces = self.scorer.largest_faces([s.source for s in samples])
        found = [(s.identity_id, f.embedding) for s, f in zip(samples, faces) if f is not None]
        vals = [cosine(a, b) for i, (ia, a) in enumerate(found) for ib, b in found[i + 1:] if ia != ib]
        return float(np.mean(vals)) if vals else float("nan")


def _summarise(images: Sequence[Any], samples: Sequence[Any], scorers: DemoScorers | None) -> dict[str, Any]:
    """L1 to the rendered target (pixels in [0, 1], overall and per category) plus the scorers' numbers."""
    def arr(img: Any) -> np.ndarray:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0

    cats = sorted({s.category for s in samples})

    def by_category(values: Sequence[float | None]) -> dict[str, float]:
        per = {c: [v for v, s in zip(values, samples) if s.category == c and v is not None] for c in cats}
        return {c: float(np.mean(v)) if v else float("nan") for c, v in per.items()}

    l1 = [float(np.abs(arr(o) - arr(s.target)).mean()) for o, s in zip(images, samples)]
    out: dict[str, Any] = {"l1_to_target": {**by_category(l1), "all": float(np.mean(l1))},
                           "per_sample": {"l1": l1}}  # in the order of ``samples`` (paired comparisons)
    if scorers is not None:
        sc = scorers.score(images, samples)
        found = [v for v in sc["identity"] if v is not None]
        out.update(identity=float(np.mean(found)) if found else float("nan"),
                   face_missing=1.0 - len(found) / len(images), edit_present=float(np.mean(sc["edit_present"])),
                   clip_t=float(np.mean(sc["clip_t"])))
        out.update(edit_present_by_category=by_category(sc["edit_present"]),
                   identity_by_category=by_category(sc["identity"]))
        out["per_sample"].update(identity=list(sc["identity"]), edit_present=list(sc["edit_present"]))
    return out


def evaluate(folder: Path, *, seed: int = 0, num_identities: int = 120, n: int = 200, size: int = IMAGE_SIZE,
             methods: Sequence[str] = ("ipnet", "ipnet-2step"), idenet_steps: int = 20,
             scorers: DemoScorers | None = None, editors: dict[str, Path] | None = None) -> dict[str, Any]:
    """Score the demo editors in ``folder`` (``ipnet/``, ``idenet/``; or ``editors``: row name -> (method, folder))
    on ``n`` pairs of the held-out *test* identities, next to the unchanged source and the rendered ground truth.

    Per row: L1 to the target (overall, per category), identity cosine to the source and the rate of outputs where no
    face is found (demo face pack), the share of edits the demo CLIP judges present, CLIP-T; per editor also the CPU
    latency of one edit of a 64-px and of a 128-px portrait (batch 1, warm, median of 5).
    """
    from PIL import Image

    from instantportrait.demo import World
    from instantportrait.methods import get_editor
    from instantportrait.methods.base import EditSettings

    world = World(seed, num_identities, size=size)
    samples = list(world.samples("test", n))
    result: dict[str, Any] = {"n": n, "size": size, "rows": {}, "people": [s.identity_id for s in samples]}
    result["rows"]["source (no edit)"] = _summarise([s.source for s in samples], samples, scorers)
    result["rows"]["rendered target"] = _summarise([s.target for s in samples], samples, scorers)
    if scorers is not None:
        result["different_identity"] = scorers.different_identity(samples[:60])
    runs = editors or {m: (m, folder / ("idenet" if m == "idenet" else "ipnet")) for m in methods}
    for row, (method, model) in runs.items():
        editor = get_editor(method, model=str(model), resolution=size, dtype=torch.float32)
        settings = EditSettings(num_inference_steps=idenet_steps) if method == "idenet" else None
        outs: list[Any] = []
        for i in range(0, n, 25):
            chunk = samples[i:i + 25]
            outs += editor.edit([s.source for s in chunk], [s.instruction for s in chunk], seed=0, settings=settings)
        rec = _summarise(outs, samples, scorers)
        rec["nfe"] = editor.nfe(settings)
        for px in (size, 128):
            img = samples[0].source.resize((px, px), Image.BICUBIC)
            times = []
            for _ in range(6):
                t0 = time.perf_counter()
                editor.edit([img], [samples[0].instruction], seed=0, settings=settings)
                times.append(time.perf_counter() - t0)
            rec[f"latency_s_{px}px"] = float(np.median(times[1:]))
        result["rows"][row] = rec
        editor.unload()
    return result


def acceptance(res: dict[str, Any], row: str = "ipnet") -> dict[str, Any]:
    """Issue #4's acceptance for ``row`` (IPNet 1-step): edits judged present >= 80 %, identity cosine >= 0.7
    (unchanged source: 1.0), L1 to the target below the unchanged source's, 128-px CPU edit < 0.5 s."""
    m, src = res["rows"][row], res["rows"]["source (no edit)"]
    checks = {"edit_present >= 0.80": m.get("edit_present", 0.0) >= ACCEPT["edit_present"],
              "identity >= 0.70": m.get("identity", 0.0) >= ACCEPT["identity"],
              "L1 below the source's": m["l1_to_target"]["all"] < src["l1_to_target"]["all"],
              "128-px CPU edit < 0.5 s": m.get("latency_s_128px", 1e9) < 0.5}
    return {"checks": checks, "passed": all(checks.values())}


def format_eval(res: dict[str, Any]) -> str:
    """A Markdown table of :func:`evaluate`'s result (one row per editor and reference)."""
    first = next(iter(res["rows"].values()))
    cats = [c for c in first["l1_to_target"] if c != "all"]
    scored = "identity" in first
    head = ["row", "L1→target"] + (["identity cos", "no face", "edit present", "CLIP-T"] if scored else []) + \
        [f"L1 {c}" for c in cats] + ["NFE", "CPU s/edit 64 px", "CPU s/edit 128 px"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name, m in res["rows"].items():
        cells = [name, f"{m['l1_to_target']['all']:.4f}"]
        if scored:
            cells += [f"{m['identity']:.3f}", f"{m['face_missing']:.1%}", f"{m['edit_present']:.1%}",
                      f"{m['clip_t']:.3f}"]
        cells += [f"{m['l1_to_target'][c]:.4f}" for c in cats]
        cells += [str(m.get("nfe", "–"))] + [f"{m[k]:.3f}" if k in m else "–"
                                             for k in ("latency_s_64px", "latency_s_128px")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"{res['n']} pairs of held-out test identities, {res['size']} px; L1 on pixels in [0, 1]."]
    if scored:
        notes.append(f"Identity: demo face pack cosine to the source (the source itself: 1.0; different people: "
                     f"{res['different_identity']:.3f} on average). Edit present: the demo CLIP scores the output "
                     "closer to the target's caption than to the source's.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


# ---------------------------------------------------------------------------------------------------- the run
def _stage(work: Path, name: str, key: dict[str, Any], fn: Callable[[], Path], times: dict[str, float],
           reused: list[str] | None = None) -> Path:
    """Run one stage of the demo pipeline, or reuse its output from an earlier run with the same settings.

    A stage records ``<work>/<name>.done.json`` (its settings, output path and seconds) only after it finished, so a
    run that crashed or was killed restarts at the first unfinished stage and loses nothing before it. ``times``
    gets the stage's seconds (a reused stage's as recorded when it ran; its name is appended to ``reused``).
    """
    marker = work / f"{name}.done.json"
    key = json.loads(json.dumps(key, default=str))
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("key") == key and Path(done["path"]).exists():
            print(f"[{name}] reusing {done['path']} (finished earlier with the same settings)", flush=True)
            times[name] = float(done.get("seconds", 0.0))
            if reused is not None:
                reused.append(name)
            return Path(done["path"])
    t0 = time.perf_counter()
    path = Path(fn())
    times[name] = time.perf_counter() - t0
    print(f"[{name}] done in {times[name]:.1f} s", flush=True)
    marker.write_text(json.dumps({"key": key, "path": str(path), "seconds": times[name]}, indent=1) + "\n")
    return path


def _idenet_config(cfg: DemoConfig, work: Path, base: Path, data: Path, rec: Path | None
                   ) -> tuple[IDENetConfig, str]:
    """The demo IDE-Net's training config and, for its card, how identity was weighted (L_aid through the demo
    face pack's encoder when it exists, none otherwise)."""
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
    return load_config(IDENetConfig, CONFIG_DIR / "demo_idenet.yaml", ide_over), identity


def _ship(out: Path, staged: Path, cfg: DemoConfig,
          configs: tuple[IDENetConfig, IPNetConfig | None, IPNetConfig],
          identity: dict[str, str], numbers: str) -> None:
    """Write the model cards into the staged fp16 folders and copy them over ``out/idenet`` and ``out/ipnet``.
    ``configs``: the IDE-Net, IPNet warm-up and IPNet configs the cards' recipes name."""
    icfg, wcfg, pcfg = configs
    pred = "v" if cfg.prediction_type == "v_prediction" else "ε"
    start = (f"after a warm-up of {wcfg.max_train_steps} steps of L_pair alone that started from the demo IDE-Net "
             "(`../idenet`)" if wcfg is not None else "starting as a copy of the demo IDE-Net (`../idenet`)")
    recipes = {"idenet": f"Objective: the {pred} loss with conditioning dropout, {icfg.max_train_steps} steps.",
               "ipnet": f"Objective: {ipnet_recipe(pcfg)}, {pcfg.max_train_steps} steps, {start}."}
    ip_configs = ("train/configs/demo_ipnet_warmup.yaml then train/configs/demo_ipnet.yaml" if wcfg is not None
                  else f"train/configs/{RECIPE_CONFIGS['paper']}")
    for name, trainer in (("idenet", "train/train_idenet.py, train/configs/demo_idenet.yaml"),
                          ("ipnet", f"train/train_ipnet.py, {ip_configs}")):
        write_card(staged / name, "IDE-Net" if name == "idenet" else "IPNet", trainer, cfg, identity[name],
                   "\n\n" + numbers + "\n", recipes[name])
        if (out / name).exists():
            shutil.rmtree(out / name)
        shutil.copytree(staged / name, out / name)


def _ipnet_stages(cfg: DemoConfig, work: Path, idenet: Path, data: Path, rec: Path | None, ide_key: dict[str, Any],
                  times: dict[str, float], reused: list[str]) -> tuple[Path, IPNetConfig | None, IPNetConfig, str]:
    """Train the demo IPNet from ``idenet`` with ``cfg.recipe`` (``paper``: one stage, ``demo_ipnet_paper.yaml``;
    ``pair``: the L_pair warm-up, then ``demo_ipnet.yaml``); returns (folder, warm-up config or None, final config,
    how identity was used, for the card)."""
    from train import train_ipnet

    ip_over: dict[str, Any] = {"model": str(idenet), "dataset": str(data), "seed": cfg.seed,
                               "resolution": cfg.image_size}
    wcfg, key = None, dict(ide_key)
    if cfg.recipe == "pair":
        wcfg = load_config(IPNetConfig, CONFIG_DIR / "demo_ipnet_warmup.yaml",
                           {**ip_over, "output_dir": str(work / "ipnet_warmup"), "identity_model": "none"})
        if cfg.warmup_steps:
            wcfg = replace(wcfg, max_train_steps=cfg.warmup_steps)
        key["warmup"] = config_to_dict(wcfg)
        warm = _stage(work, "ipnet_warmup", key, lambda: train_ipnet.train(wcfg), times, reused)
        ip_over["student_init"] = str(warm)
    elif cfg.recipe != "paper":
        raise ValueError(f"DemoConfig.recipe must be 'paper' or 'pair', got {cfg.recipe!r}")
    ip_over.update(output_dir=str(work / "ipnet"), identity_model=str(rec) if rec is not None else "none")
    if rec is None:
        ip_over["weights.identity"] = 0.0
    pcfg = load_config(IPNetConfig, CONFIG_DIR / RECIPE_CONFIGS[cfg.recipe], ip_over)
    if cfg.ipnet_steps:
        pcfg = replace(pcfg, max_train_steps=cfg.ipnet_steps)
    stage = ", in stage 2 only" if wcfg is not None else ""
    identity = (f"a constant weight of {pcfg.weights.identity:g} on 1 - cos through `{rec.name}` of the demo "
                f"face pack{stage}" if rec is not None and pcfg.weights.identity else "none")
    ipnet = _stage(work, "ipnet", {**key, "ipnet": config_to_dict(pcfg)}, lambda: train_ipnet.train(pcfg),
                   times, reused)
    return ipnet, wcfg, pcfg, identity


def run(out: Path, cfg: DemoConfig, *, work: Path | None = None, ship_bar: float = SHIP_BAR,
        force_ship: bool = False) -> dict[str, Any]:
    """The whole demo run; returns the evaluation and whether the models were shipped into ``out``."""
    from instantportrait.demo import World
    from train import train_idenet

    work = Path(work) if work else out / ".demo_work"
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    reused: list[str] = []
    world_key = {"seed": cfg.seed, "num_identities": cfg.num_identities, "train_pairs": cfg.train_pairs,
                 "image_size": cfg.image_size}
    data = work / "pairs"

    def export() -> Path:
        World(cfg.seed, cfg.num_identities, size=cfg.image_size).export_pairs(data, "train", cfg.train_pairs,
                                                                              overwrite=True)
        return data

    _stage(work, "data", world_key, export, times, reused)
    base_key = {**world_key, "vae": [cfg.vae_steps, cfg.vae_batch, cfg.vae_lr, list(cfg.vae_channels),
                                     cfg.vae_face_weight], "unet": "32-64-96", "prediction_type": cfg.prediction_type,
                "attention_levels": cfg.attention_levels}
    base = _stage(work, "base", base_key, lambda: build_base(work / "base", data, cfg), times, reused)

    if cfg.scorers and (find_recognition_onnx(out / "face_pack") is None or not (out / SCORER_CLIP).is_file()):
        times["scorers"] = train_demo_scorers(out, cfg)
    rec = find_recognition_onnx(out / "face_pack")
    icfg, identity = _idenet_config(cfg, work, base, data, rec)
    ide_key = {**base_key, "idenet": config_to_dict(icfg)}
    idenet = _stage(work, "idenet", ide_key, lambda: train_idenet.train(icfg), times, reused)

    ipnet, wcfg, pcfg, ipnet_identity = _ipnet_stages(cfg, work, idenet, data, rec, ide_key, times, reused)

    staged = work / "staged"
    to_fp16_folder(idenet, staged / "idenet")
    to_fp16_folder(ipnet, staged / "ipnet")
    t0 = time.perf_counter()
    scorers = DemoScorers.load(out / "face_pack", out / SCORER_CLIP) if rec is not None else None
    res = evaluate(staged, seed=cfg.seed, num_identities=cfg.num_identities, n=cfg.eval_pairs, size=cfg.image_size,
                   scorers=scorers)
    times["evaluate"] = time.perf_counter() - t0
    res["times_s"] = times
    res["reused_stages"] = reused  # their seconds are those recorded when they ran
    src, one = res["rows"]["source (no edit)"]["l1_to_target"]["all"], res["rows"]["ipnet"]["l1_to_target"]["all"]
    res["improvement"] = 1.0 - one / src
    res["acceptance"] = acceptance(res) if scorers is not None else None
    res["shipped"] = bool(force_ship or res["improvement"] >= ship_bar)
    numbers = format_eval(res)
    print(numbers, flush=True)
    print(json.dumps({"times_s": times, "improvement": res["improvement"], "acceptance": res["acceptance"]}),
          flush=True)
    if res["shipped"]:
        _ship(out, staged, cfg, (icfg, wcfg, pcfg), {"idenet": identity, "ipnet": ipnet_identity}, numbers)
        (out / "demo_editors_eval.json").write_text(json.dumps(res, indent=2) + "\n")
    else:
        print(f"NOT shipped: IPNet 1-step is {100 * res['improvement']:.1f}% below the source's L1 "
              f"(bar {100 * ship_bar:.0f}%)", flush=True)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("instantportrait/demo/models"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes and a handful of steps (tests)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: <out>/.demo_work)")
    p.add_argument("--ship-bar", type=float, default=SHIP_BAR)
    p.add_argument("--force-ship", action="store_true", help="write the models even below the bar (tests)")
    p.add_argument("--evaluate", type=Path, default=None, metavar="FOLDER",
                   help="only evaluate the models in FOLDER (ipnet/, idenet/) on test identities with the demo\n"
                        "scorers and print issue #4's acceptance checks")
    p.add_argument("--eval-pairs", type=int, default=None)
    p.add_argument("--recipe", choices=sorted(RECIPE_CONFIGS), default=None,
                   help="the IPNet objective: paper (L_adv + L_distill + L_triplet + identity) or pair (an L_pair\n"
                        f"warm-up, then L_adv + L_pair + identity); default {DemoConfig.recipe}")
    p.add_argument("--with-idenet", action="store_true", help="--evaluate: also IDE-Net (20 steps, slow)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.evaluate is not None:
        cfg = DemoConfig(seed=args.seed)
        methods = ("ipnet", "ipnet-2step") + (("idenet",) if args.with_idenet else ())
        res = evaluate(args.evaluate, seed=cfg.seed, num_identities=cfg.num_identities,
                       n=args.eval_pairs or cfg.eval_pairs, methods=methods, scorers=DemoScorers.load())
        res["acceptance"] = acceptance(res)
        print(format_eval(res))
        print("Acceptance (IPNet 1-step): " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}"
                                                       for k, v in res["acceptance"]["checks"].items()))
        return res
    cfg = DemoConfig.quick(args.seed) if args.quick else DemoConfig(seed=args.seed)
    if args.eval_pairs:
        cfg = replace(cfg, eval_pairs=args.eval_pairs)
    if args.recipe:
        cfg = replace(cfg, recipe=args.recipe)
    return run(args.out, cfg, work=args.work, ship_bar=args.ship_bar, force_ship=args.force_ship)


if __name__ == "__main__":
    main()

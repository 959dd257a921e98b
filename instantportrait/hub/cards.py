"""Model cards: one builder for every checkpoint this project writes (IPNet, IDE-Net, the tiny decoder, the toy demo
models), so that each card carries the same facts in the same places (the header the Hub reads, what the model is,
how to load it, the training recipe, the data, the metrics, the licence notes) and a trainer only supplies facts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSIGHTFACE_NOTE = (
    "The identity losses used in training (and the evaluation face model) rely on insightface-derived ArcFace "
    "weights, which insightface releases for **non-commercial research only**. Check those terms before any "
    "commercial use of this checkpoint or of models trained with it."
)
PAPER = "*InstantPortrait: One-Step Portrait Editing via Diffusion Multi-Objective Distillation*, ICLR 2025"
SYNTHETIC_TOY_NOTE = ("Trained on a small synthetic portrait world by this project's trainers, to make the offline "
                      "demo and tests honest.")


@dataclass(frozen=True)
class CardKind:
    """What a card says because of *what kind* of checkpoint it describes; the facts of one checkpoint come from the
    ``info`` dict. Text fields are ``str.format`` templates over ``info`` (a missing key reads ``n/a``; ``{repo}``
    is ``info["repo_id"]`` or ``PATH_OR_REPO``)."""

    title: str  # default for info["name"]
    tags: tuple[str, ...]
    intro: str
    heading: str = "{name}"
    use: str = ""  # a Python snippet for "## Use"
    after_use: str = ""
    intended_use: str = ""
    limitations: str = ""
    toy_note: str = ""  # shown as a warning when info["toy"]
    header: bool = True  # the YAML metadata block the Hub reads
    always_recipe: bool = True  # "Not recorded." rather than no section: a published checkpoint should say so
    insightface: bool = True  # trained with insightface-derived identity losses: the licence note applies


_NOT_FOR = "Not for deceptive impersonation, non-consensual edits of real people, or identity verification."

KINDS: dict[str, CardKind] = {
    "ipnet": CardKind(
        title="IPNet", tags=("instantportrait", "ipnet", "instruction-based-editing", "portrait", "one-step"),
        intro=f"One-step instruction-based portrait editor from the InstantPortrait project (our open implementation "
              f"of {PAPER}).",
        use="import torch\nfrom instantportrait import InstantPortraitPipeline\n"
            "pipe = InstantPortraitPipeline.from_pretrained({repo!r})\n"
            "out = pipe(image, \"wearing hipster glasses\", num_inference_steps=1,\n"
            "           generator=torch.Generator().manual_seed(0)).images[0]",
        after_use="Fixed student timestep: {timestep}; start latent: {start}. `num_inference_steps=2` runs the style "
                  "boost (the first output becomes the second step's source).",
        intended_use="Research and demos of fast, identity-preserving portrait edits (filters, AR, video calls). "
                     + _NOT_FOR,
        limitations="Edits are limited to the instruction categories seen in training; identity preservation degrades "
                    "on extreme poses, occlusions and several faces.",
        toy_note=SYNTHETIC_TOY_NOTE + " It edits the synthetic portraits it was trained on; it does not edit real "
                 "photographs."),
    "idenet": CardKind(
        title="IDE-Net",
        tags=("instantportrait", "idenet", "instruct-pix2pix", "instruction-based-editing", "portrait"),
        intro=f"IDE-Net, the identity-enhanced multi-step teacher of the InstantPortrait project (our open "
              f"implementation of {PAPER}): InstructPix2Pix fine-tuned on paired portrait edits with an identity "
              "loss. IPNet is distilled from it.",
        use="import torch\nfrom diffusers import StableDiffusionInstructPix2PixPipeline\n"
            "pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained({repo!r},\n"
            "                                                          safety_checker=None)\n"
            "out = pipe(\"wearing hipster glasses\", image=image, num_inference_steps=50, image_guidance_scale=1.5,\n"
            "           guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]\n\n"
            "# or through the project's editor registry:\n"
            "from instantportrait.methods import get_editor\n"
            "editor = get_editor(\"idenet\", model={repo!r})\n"
            "out = editor.edit([image], [\"wearing hipster glasses\"], seed=0)[0]",
        intended_use="Research, and as the teacher for IPNet distillation. " + _NOT_FOR,
        toy_note="Trained on a small synthetic portrait world by this project's trainers; it does not edit real "
                 "photographs."),
    "tiny-decoder": CardKind(
        title="Tiny latent decoder", tags=("instantportrait", "tiny-decoder", "taesd"),
        intro="A small latent decoder (diffusers `DecoderTiny`, TAESD's decoder layout) that stands in for the VAE "
              "decoder of an InstantPortrait pipeline: `pipe.use_tiny_decoder(folder)`. It reads the pipeline's "
              "scaled latents and returns pixels in [-1, 1]; `pipe.use_full_decoder()` switches back.",
        header=False, always_recipe=False, insightface=False),
    "toy-demo": CardKind(
        title="Demo model", tags=("instantportrait", "toy"), heading="{name} — TOY demo model (synthetic data)",
        intro="**This is a toy model.** It was trained in minutes on CPU by `python -m train.demo` on {train_pairs} "
              "procedurally rendered 64x64 portraits of the InstantPortrait synthetic world "
              "(`instantportrait/demo/`, seed {seed}, train identities only), with the project's own trainer "
              "({trainer}). It exists so the app, CLI, benchmark and tests show *learned* edits on a machine with no "
              "network. It is not a real portrait editor.",
        limitations="What it can do: apply the synthetic world's edits (accessories, facial hair, clothing, "
                    "background, era/style) to synthetic-world portraits at 64 px, from instructions phrased in the "
                    "world's vocabulary.\nWhat it cannot do: edit real photographs, understand words outside the "
                    "world's vocabulary (unknown words become byte tokens it never saw), produce detail beyond 64 px, "
                    "or preserve a real person's identity. Its text encoder is a frozen *random* tiny CLIP text model "
                    "(a fixed injective embedding the UNet learned to read), its VAE a 2x autoencoder trained on the "
                    "world's images only. Weights are stored in fp16 (load with `dtype=torch.float32` to upcast).",
        header=False, always_recipe=False, insightface=False),
}


class _Fields(dict):
    """``info`` for ``str.format_map``: a fact nobody recorded reads ``n/a`` instead of raising."""

    def __missing__(self, key: str) -> str:
        return "n/a"


def _header(info: Mapping[str, Any], kind: CardKind) -> list[str]:
    """The YAML metadata block (licence, tags, base model) the Hub shows and indexes."""
    import yaml

    header = {"library_name": "diffusers", "pipeline_tag": "image-to-image", "license": info.get("licence", "openrail"),
              "tags": list(kind.tags)}
    base = str(info.get("base_model") or "")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", base) and not Path(base).expanduser().exists():
        header["base_model"] = base  # the Hub rejects a local path here; the card's text may still name it
    return ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]


def card_sections(info: Mapping[str, Any], *, always_recipe: bool = False) -> list[str]:
    """The fact sections of a card, as lines: ``training`` (a config dict, shown as YAML, or a sentence), ``data``,
    ``metrics`` (``{name: value}`` as a table, or a sentence) and ``sections`` (``{heading: text}``, in order).

    Publishing reuses it to append the facts it adds to a card a trainer wrote."""
    import yaml

    lines: list[str] = []
    training = info.get("training")
    if training or always_recipe:
        lines += ["## Training recipe"]
        if isinstance(training, Mapping):
            lines += ["```yaml", yaml.safe_dump(dict(training), sort_keys=False).strip(), "```"]
        else:
            lines += [str(training or "Not recorded.")]
        lines += [""]
    if info.get("data") or always_recipe:
        lines += ["## Data", str(info.get("data") or "Not recorded."), ""]
    metrics = info.get("metrics")
    if isinstance(metrics, Mapping) and metrics:
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += [""]
    elif metrics:
        lines += ["## Metrics", str(metrics), ""]
    for heading, text in (info.get("sections") or {}).items():
        lines += [f"## {heading}", "", str(text), ""]
    return lines


def model_card(info: Mapping[str, Any]) -> str:
    """A model card (Markdown, with a YAML header for the Hub kinds) from facts about one checkpoint.

    ``info["kind"]`` picks the :data:`KINDS` entry: ``ipnet`` (default), ``idenet``, ``tiny-decoder``, ``toy-demo``.
    Other known keys (all optional): ``name`` (title), ``repo_id``, ``base_model``, ``licence``, ``toy`` (a demo
    model on synthetic data), ``details`` (text after the usage), the fact sections of :func:`card_sections`
    (``training``, ``data``, ``metrics``, ``sections``), ``insightface`` (override whether the insightface licence
    note applies), ``notes``; and whatever the kind's templates name (``timestep``, ``start``; ``train_pairs``,
    ``seed``, ``trainer`` for the toy demo models).
    """
    name = info.get("kind") or "ipnet"
    if name not in KINDS:
        raise ValueError(f"unknown model card kind {name!r}; known: {', '.join(KINDS)}")
    kind = KINDS[name]
    fields = _Fields(info)
    fields.setdefault("name", kind.title)
    fields["repo"] = info.get("repo_id", "PATH_OR_REPO")
    lines = _header(info, kind) if kind.header else []
    lines += [f"# {kind.heading.format_map(fields)}", ""]
    if info.get("toy") and kind.toy_note:
        lines += [f"> **Toy model.** {kind.toy_note}", ""]
    lines += [kind.intro.format_map(fields), ""]
    if kind.use:
        lines += ["## Use", "```python", kind.use.format_map(fields), "```", ""]
    lines += [text + "\n" for text in (kind.after_use.format_map(fields), info.get("details")) if text]
    lines += card_sections(info, always_recipe=kind.always_recipe)
    for heading, text in (("Intended use", kind.intended_use), ("Limitations", kind.limitations)):
        if text:
            lines += [f"## {heading}", text, ""]
    if info.get("insightface", kind.insightface):
        lines += ["## Licence notes", INSIGHTFACE_NOTE, ""]
    if info.get("notes"):
        lines += ["## Notes", str(info["notes"]), ""]
    return "\n".join(lines)

"""Training configs: dataclasses, loaded from YAML, overridden from the command line, saved inside every checkpoint.

    cfg = load_config(IDENetConfig, "train/configs/idenet_aid.yaml", {"max_train_steps": 10})
    save_config(cfg, "run/train_config.yaml"); assert load_config_file("run/train_config.yaml") == cfg

Precedence: dataclass defaults < the YAML file < ``--set key=value`` (repeatable; ``--set weights.adv=0.5`` for a
nested field) < explicit flags (every top-level field has one: ``identity_weighting`` -> ``--identity-weighting``).
Unknown keys are an error everywhere (YAML, ``--set``), naming the closest valid key. Values are checked and coerced
to the field's type (``1e-5`` is a float even though YAML reads it as a string); invalid choices raise one
``ValueError`` naming the field. ``trainer`` tells which dataclass a file is for (``idenet`` / ``ipnet``). A file may
start from another: ``base: demo_ipnet.yaml`` loads that file (relative to this one) and then applies this file's keys
on top (nested mappings such as ``weights`` key by key), so a variant holds only what differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

IDENTITY_WEIGHTINGS = ("annealing", "constant", "none")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
TEACHER_STARTS = ("ddim-inversion", "stochastic")
DISTILL_PAIRINGS = ("shared", "independent")
INVERSION_PROMPTS = ("empty", "instruction")
DISTILL_SPACES = ("latent", "pixel")
DISTILL_KINDS = ("l2", "l1", "perceptual", "l2+perceptual")
ADV_LOSSES = ("hinge", "nonsaturating")
START_MODES = ("noise", "source")
TRIPLET_FEATURES = ("auto", "clip", "vae")
TRIPLET_DISTANCES = ("cosine", "l2")
SDS_WEIGHTINGS = ("sds", "uniform")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
DEFAULT_IDENTITY_MODEL = "~/.insightface/models/antelopev2/glintr100.onnx"
CONFIG_FILE = "train_config.yaml"
BASE_KEY = "base"  # in a YAML file: the file it extends

C = TypeVar("C")


def _help(text: str, **kw: Any) -> Any:
    """A dataclass field with a help string (shown by ``--help``)."""
    return field(metadata={"help": text}, **kw)


def _guidance(whose: str, condition: str, default: float) -> Any:
    """A classifier-free-guidance scale field: the teacher's sampling and SDS each take a text and an image one,
    written alike so that their help reads alike."""
    return _help(f"{whose} {condition} CFG scale", default=default)


def _t_bound(whose: str, end: str, default: int) -> Any:
    """One end of a sampled-timestep range field (the discriminator's re-noising and SDS each have a low and a high
    one; ``__post_init__`` checks the pair)."""
    return _help(f"{whose} timestep range, {'low end' if end == 'low' else 'high end (inclusive)'}", default=default)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'}; got {value!r}")


@dataclass
class TrainConfig:
    """What both trainers share: data, optimisation, precision, EMA, seeding, checkpoints, logging, validation."""

    trainer: str = _help("which trainer this config is for: idenet | ipnet", default="")
    model: str = _help("base model: a config.MODELS key (instructpix2pix, idenet, ...), a local folder or a Hub "
                       "repo[@rev]", default="instructpix2pix")
    dataset: str = _help("paired-edit dataset folder (train/build_dataset.py output)", default="data/pairs")
    output_dir: str = _help("where checkpoints, logs and the final model go", default="outputs/run")
    resolution: int = _help("square training resolution in pixels (a multiple of the VAE factor)", default=512)
    hflip: bool = _help("random horizontal flips (deterministic per seed and sample position)", default=False)
    train_batch_size: int = _help("batch size per process per micro-step", default=4)
    gradient_accumulation_steps: int = _help("micro-batches per optimiser step", default=1)
    max_train_steps: int = _help("optimiser steps (generator iterations for IPNet) in total", default=10000)
    learning_rate: float = _help("peak learning rate (IPNet: of the student)", default=1e-5)
    lr_scheduler: str = _help(f"one of {', '.join(LR_SCHEDULERS)} (diffusers.optimization)", default="constant")
    lr_warmup_steps: int = _help("warm-up in optimiser steps", default=0)
    adam_beta1: float = _help("AdamW beta1", default=0.9)
    adam_beta2: float = _help("AdamW beta2", default=0.999)
    adam_weight_decay: float = _help("AdamW weight decay", default=1e-2)
    adam_epsilon: float = _help("AdamW epsilon", default=1e-8)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", default=1.0)
    mixed_precision: str = _help("no | fp16 | bf16 (accelerate); frozen models are cast to it", default="no")
    gradient_checkpointing: bool = _help("recompute UNet (and VAE decoder) activations in backward", default=False)
    allow_tf32: bool = _help("TF32 matmuls on Ampere+ GPUs", default=True)
    use_ema: bool = _help("keep an EMA of the trained UNet; the saved model uses the EMA weights", default=True)
    ema_decay: float = _help("EMA decay (diffusers EMAModel, with its (1+s)/(10+s) warm-up)", default=0.9999)
    seed: int = _help("seed of everything: data order, noise, timesteps, dropout, augmentation", default=0)
    dataloader_num_workers: int = _help("DataLoader workers", default=0)
    checkpointing_steps: int = _help("save output_dir/checkpoint-<step> every N steps (and at the end)",
                                     default=500)
    checkpoints_total_limit: int | None = _help("keep at most this many checkpoints (None = all)", default=3)
    resume: str | None = _help("'latest' (newest checkpoint in output_dir, else start fresh) or a checkpoint "
                               "folder", default=None)
    log_every: int = _help("write a JSONL log record every N steps", default=10)
    validation_steps: int = _help("validation edits every N steps and at the end (0 = off)", default=0)
    num_validation_images: int = _help("how many dataset rows validation edits", default=4)
    face_pack: str | None = _help("insightface pack (key or folder) for validation ID-sim (None = off)",
                                  default=None)
    clip: str | None = _help("CLIP variant or weights file for validation CLIP-T (IPNet: also the triplet "
                             "features; None = off)", default=None)
    push_to_hub: str | None = _help("Hub repo id to publish the final model to (model card with this config); "
                                    "None = don't publish", default=None)
    hub_revision: str | None = _help("branch to publish to (created if missing); None = main", default=None)

    def __post_init__(self) -> None:
        expected = getattr(type(self), "TRAINER", "")
        if expected and self.trainer != expected:
            raise ValueError(f"trainer is {self.trainer!r} but this is a {type(self).__name__} "
                             f"(trainer: {expected}); use the matching train/train_{self.trainer or '...'}.py")
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                     "checkpointing_steps", "log_every"):
            _positive(name, getattr(self, name))
        for name in ("lr_warmup_steps", "dataloader_num_workers", "validation_steps", "num_validation_images",
                     "max_grad_norm", "adam_weight_decay"):
            _positive(name, getattr(self, name), zero_ok=True)
        _positive("learning_rate", self.learning_rate)
        if self.checkpoints_total_limit is not None:
            _positive("checkpoints_total_limit", self.checkpoints_total_limit)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay!r}")
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer (never None); got {self.seed!r}")
        if self.resume is not None and not str(self.resume).strip():
            raise ValueError("resume must be 'latest', a checkpoint folder, or unset")


@dataclass
class IDENetConfig(TrainConfig):
    """IDE-Net: InstructPix2Pix fine-tuning with the ε loss plus the (annealing / constant) identity loss."""

    TRAINER: typing.ClassVar[str] = "idenet"
    trainer: str = _help("which trainer this config is for", default="idenet")
    identity_model: str = _help("insightface recognition ONNX for the differentiable ArcFace, or 'none'",
                                default=DEFAULT_IDENTITY_MODEL)
    identity_weighting: str = _help("annealing (L_aid, weight ∝ ᾱ_t^power) | constant (L_cid) | none",
                                    default="annealing")
    identity_weight: float = _help("weight of the identity term in the total loss", default=1.0)
    identity_power: float = _help("annealing: exponent of ᾱ_t", default=1.0)
    identity_ramp_steps: int = _help("annealing: linear warm-up of the identity weight over training steps "
                                     "(0 = off)", default=0)
    identity_min_weight: float = _help("skip the identity term (no VAE decode) for samples whose schedule weight "
                                       "is below this", default=0.0)
    conditioning_dropout_prob: float = _help("InstructPix2Pix dropout: text only, image only and both each with "
                                             "this probability", default=0.05)
    timestep_bias: float = _help("0: timesteps drawn uniformly (InstructPix2Pix); b > 0: density proportional to "
                                 "t^b, more of the high-noise steps where the edit must come from the instruction "
                                 "(a few-step sampler starts there)", default=0.0)
    validation_inference_steps: int = _help("sampling steps of the validation edits", default=20)
    validation_guidance_scale: float = _help("text guidance of the validation edits", default=7.5)
    validation_image_guidance_scale: float = _help("image guidance of the validation edits", default=1.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("identity_weighting", self.identity_weighting, IDENTITY_WEIGHTINGS)
        if self.identity_weighting != "none" and self.identity_model.strip().lower() == "none":
            raise ValueError(f"identity_weighting={self.identity_weighting!r} needs an identity_model (an "
                             "insightface recognition ONNX); set identity_weighting: none to train without it")
        if not 0.0 <= self.conditioning_dropout_prob <= 1 / 3:
            raise ValueError(f"conditioning_dropout_prob must be in [0, 1/3]; got {self.conditioning_dropout_prob}")
        for name in ("identity_weight", "identity_power", "identity_ramp_steps", "identity_min_weight",
                     "timestep_bias"):
            _positive(name, getattr(self, name), zero_ok=True)
        _positive("validation_inference_steps", self.validation_inference_steps)

    @property
    def uses_identity(self) -> bool:
        return self.identity_weighting != "none" and self.identity_weight > 0


@dataclass
class LossWeights:
    """IPNet's loss weights; a term with weight 0 is not computed at all."""

    adv: float = _help("L_adv (generator side)", default=1.0)
    distill: float = _help("L_distill", default=1.0)
    sds: float = _help("L_sds", default=0.0)
    triplet: float = _help("L_triplet (Facial-Style Enhancing)", default=0.1)
    identity: float = _help("identity loss on the student output", default=0.5)
    pair: float = _help("L_pair: latent L2 onto the pair's own target (not in the paper; the toy demo uses it)",
                        default=0.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _positive(f"weights.{f.name}", getattr(self, f.name), zero_ok=True)
        if not any(getattr(self, f.name) > 0 for f in dataclasses.fields(self)):
            raise ValueError("every loss weight is 0: nothing to train")

    def active(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) > 0}


@dataclass
class IPNetConfig(TrainConfig):
    """IPNet: one-step student distilled from IDE-Net with L_adv, L_distill, L_sds, L_triplet and identity."""

    TRAINER: typing.ClassVar[str] = "ipnet"
    trainer: str = _help("which trainer this config is for", default="ipnet")
    model: str = _help("the teacher (IDE-Net): a config.MODELS key, a local folder or a Hub repo", default="idenet")
    student_init: str | None = _help("the student's initialisation (default: the teacher)", default=None)
    learning_rate: float = _help("student learning rate", default=5e-6)
    timestep: int = _help("the student's fixed timestep t*", default=999)
    start: str = _help("student start latent: noise | source (source noised to t*)", default="noise")
    weights: LossWeights = field(default_factory=LossWeights, metadata={"help": "loss weights"})
    two_step: bool = _help("refused when true: 2-step is inference-only (the pipeline's num_inference_steps=2 "
                           "runs the one-step student on its own output); no objective trains the second output",
                           default=False)
    two_step_weight: float = _help("unused (kept so older configs load): see two_step", default=0.5)
    log_grad_norms_every: int = _help("log each generator term's gradient norm on the student output "
                                      "(grad_norm/<term>) every N steps; 0 = off", default=50)
    # adversarial
    discriminator: str = _help("discriminator by name (train_ipnet.DISCRIMINATORS)", default="unet-feature")
    disc_hidden: int = _help("discriminator head width", default=64)
    disc_levels: list[int] | None = _help("teacher feature levels the heads read (None = all)", default=None)
    disc_learning_rate: float = _help("discriminator learning rate", default=1e-5)
    adv_loss: str = _help("hinge | nonsaturating", default="hinge")
    disc_t_min: int = _t_bound("the discriminator input's re-noising", "low", 10)
    disc_t_max: int = _t_bound("the discriminator input's re-noising", "high", 750)
    gen_update_ratio: int = _help("the student steps every N iterations, the discriminator every iteration "
                                  "(DMD2's dfake_gen_update_ratio)", default=1)
    # distillation
    teacher_start: str = _help("ddim-inversion (of the source) | stochastic (noised source)",
                               default="ddim-inversion")
    teacher_t_start: int = _help("timestep the teacher starts from", default=999)
    distill_pairing: str = _help("shared (the teacher starts from the student's start: the same ε; with "
                                 "ddim-inversion the student keeps the pipeline's start, see train_ipnet) | "
                                 "independent (the teacher draws its own start: the regress-to-the-mean ablation)",
                                 default="shared")
    inversion_prompt: str = _help("what DDIM inversion is conditioned on: empty (the empty instruction, "
                                  "InstructPix2Pix's reconstruct condition) | instruction (the edit instruction)",
                                  default="empty")
    teacher_steps: int = _help("teacher DDIM sampling steps (on the fly, per batch)", default=10)
    inversion_steps: int | None = _help("DDIM inversion steps (None = teacher_steps)", default=None)
    teacher_text_guidance: float = _guidance("teacher", "text", 7.5)
    teacher_image_guidance: float = _guidance("teacher", "image", 1.5)
    distill_space: str = _help("latent | pixel", default="latent")
    distill_kind: str = _help("l2 | l1 | perceptual | l2+perceptual (perceptual kinds need pixel space)",
                              default="l2")
    # SDS
    sds_t_min: int = _t_bound("SDS", "low", 20)
    sds_t_max: int = _t_bound("SDS", "high", 980)
    sds_text_guidance: float = _guidance("SDS teacher", "text", 7.5)
    sds_image_guidance: float = _guidance("SDS teacher", "image", 1.5)
    sds_weighting: str = _help("sds (w = 1 - ᾱ_t) | uniform", default="sds")
    # triplet
    triplet_features: str = _help("auto (clip if `clip` is set, else vae) | clip | vae (VAE-encoder pooled)",
                                  default="auto")
    triplet_clip: str | None = _help("CLIP (variant or weights file) for the triplet features; empty: `clip`. The "
                                     "paper configs name another network than the evaluation's ViT-L/14, so "
                                     "training does not optimise the benchmark's own metric", default=None)
    triplet_margin: float = _help("triplet margin", default=0.2)
    triplet_distance: str = _help("cosine | l2", default="cosine")
    face_crop_expand: float = _help("face box scale for the triplet crop and the L_pair face weighting", default=1.2)
    pair_face_weight: float = _help("L_pair weight inside the face box relative to outside (1: uniform)",
                                    default=1.0)
    # identity
    identity_model: str = _help("insightface recognition ONNX for the identity loss, or 'none'",
                                default=DEFAULT_IDENTITY_MODEL)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.weights, dict):  # built from a dict by hand
            self.weights = LossWeights(**self.weights)
        _choice("start", self.start, START_MODES)
        _choice("adv_loss", self.adv_loss, ADV_LOSSES)
        _choice("teacher_start", self.teacher_start, TEACHER_STARTS)
        _choice("distill_pairing", self.distill_pairing, DISTILL_PAIRINGS)
        _choice("inversion_prompt", self.inversion_prompt, INVERSION_PROMPTS)
        _choice("distill_space", self.distill_space, DISTILL_SPACES)
        _choice("distill_kind", self.distill_kind, DISTILL_KINDS)
        _choice("sds_weighting", self.sds_weighting, SDS_WEIGHTINGS)
        _choice("triplet_features", self.triplet_features, TRIPLET_FEATURES)
        _choice("triplet_distance", self.triplet_distance, TRIPLET_DISTANCES)
        if "perceptual" in self.distill_kind and self.distill_space != "pixel":
            raise ValueError(f"distill_kind={self.distill_kind!r} needs distill_space: pixel (the perceptual "
                             "features are VAE-encoder features of pixels)")
        if self.triplet_features == "clip" and self.weights.triplet > 0 and not (self.triplet_clip or self.clip):
            raise ValueError("triplet_features: clip needs `clip` (a CLIP variant or weights file)")
        if self.weights.identity > 0 and self.identity_model.strip().lower() == "none":
            raise ValueError("weights.identity > 0 needs an identity_model (an insightface recognition ONNX)")
        for name in ("disc_hidden", "gen_update_ratio", "teacher_steps", "disc_learning_rate"):
            _positive(name, getattr(self, name))
        for name in ("two_step_weight", "triplet_margin", "face_crop_expand", "pair_face_weight"):
            _positive(name, getattr(self, name), zero_ok=True)
        if self.inversion_steps is not None:
            _positive("inversion_steps", self.inversion_steps)
        for lo, hi in (("disc_t_min", "disc_t_max"), ("sds_t_min", "sds_t_max")):
            if not 0 <= getattr(self, lo) <= getattr(self, hi):
                raise ValueError(f"need 0 <= {lo} <= {hi}; got {getattr(self, lo)}, {getattr(self, hi)}")
        for name in ("timestep", "teacher_t_start", "log_grad_norms_every"):
            _positive(name, getattr(self, name), zero_ok=True)
        if self.teacher_t_start < self.teacher_steps:
            raise ValueError(f"teacher_t_start ({self.teacher_t_start}) must be >= teacher_steps "
                             f"({self.teacher_steps})")

    @property
    def uses_adversarial(self) -> bool:
        return self.weights.adv > 0

    @property
    def uses_teacher_target(self) -> bool:
        """L_distill and L_triplet both need the teacher's multi-step output."""
        return self.weights.distill > 0 or self.weights.triplet > 0


CONFIG_CLASSES: dict[str, type[TrainConfig]] = {"idenet": IDENetConfig, "ipnet": IPNetConfig}


# ---------------------------------------------------------------------------------------------------- coercion
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_none_word(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~", ""))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` (from YAML or a command-line string) as type ``tp``; ``ValueError`` naming ``name`` if it is not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if type(None) in args and _is_none_word(value):
            return None
        return _coerce(value, non_none[0], name)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}; "
                             f"got {value!r}")
        return config_from_dict(tp, value, where=f"{name}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False,
                 "0": False}
        if isinstance(value, (str, int)) and str(value).strip().lower() in words:
            return words[str(value).strip().lower()]
        raise ValueError(f"{name} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer; got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number: float | None = float(value.strip())
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{name} must be a number; got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{name} must be a number; got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string; got {value!r} (quote it in YAML)")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list; got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"unsupported config type {tp!r} for {name}")


def _unknown_key_error(cls: type, key: str, where: str) -> ValueError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {where}{close[0]}?)" if close else ""
    return ValueError(f"unknown {cls.__name__} key {where}{key!r}{hint}; valid keys: {', '.join(names)}")


def config_from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
    """Build ``cls`` from a dict of (possibly string) values; unknown keys and bad values raise ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} must be a mapping, got {type(data).__name__}")
    expected = getattr(cls, "TRAINER", "")
    if expected and "trainer" in data and data["trainer"] != expected:  # before the unknown-key check: clearer
        raise ValueError(f"trainer is {data['trainer']!r} but this is a {cls.__name__} (trainer: {expected}); use "
                         f"train/train_{data['trainer']}.py for this config")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key_error(cls, str(key), where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (nested dataclasses as dicts), suitable for YAML and model cards."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(cfg))
    return path


def _read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's keys, on top of its ``base:`` file's (resolved relative to this file; a base may have a base)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a YAML mapping of config keys, got {type(data).__name__}")
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"{path}: `{BASE_KEY}` must name the YAML file this one extends; got {base!r}")
    base_path = path.parent / Path(base).expanduser()  # an absolute base stays absolute
    chain = (*_chain, path.resolve())
    if base_path.resolve() in chain:
        raise ValueError(f"{path}: `{BASE_KEY}: {base}` loops back ({' -> '.join(str(p) for p in chain)})")
    if not base_path.is_file():
        raise FileNotFoundError(f"{path}: its base file {base_path} does not exist (`{BASE_KEY}:` is relative to "
                                "the file that names it)")
    return _merge(_read_yaml(base_path, chain), data)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["a=1", "weights.adv=0.5"]`` -> ``{"a": "1", "weights.adv": "0.5"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"weights.adv": 1}`` -> ``{"weights": {"adv": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key!r} sets a field inside {p!r}, which is not a nested config")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[C], path: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> C:
    """``cls`` from its defaults, then the YAML file ``path``, then ``overrides`` (``{"weights.adv": 0.5}`` or
    ``["weights.adv=0.5"]``). A file written for the other trainer raises ``ValueError``."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(path)
    if overrides:
        flat = parse_overrides(overrides) if isinstance(overrides, (list, tuple)) else dict(overrides)
        data = _merge(data, _nest(flat))
    return config_from_dict(cls, data)


def load_config_file(path: str | Path) -> TrainConfig:
    """A saved or hand-written config, its dataclass chosen by its ``trainer`` key."""
    data = _read_yaml(path)
    kind = data.get("trainer")
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"{path}: `trainer` must be one of {', '.join(CONFIG_CLASSES)}; got {kind!r}")
    return config_from_dict(CONFIG_CLASSES[kind], data)


# ---------------------------------------------------------------------------------------------------- CLI
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[TrainConfig]) -> None:
    """``--config FILE``, ``--set key=value`` (repeatable) and one ``--field-name VALUE`` flag per config field
    (``--weights.adv`` for nested ones)."""
    parser.add_argument("--config", help="YAML config file (train/configs/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set max_train_steps=100")
    group = parser.add_argument_group("config fields (override the file and --set)")

    def add(klass: type, prefix: str) -> None:
        for f in dataclasses.fields(klass):
            tp = _type_hints(klass)[f.name]
            if dataclasses.is_dataclass(tp):
                add(tp, f"{prefix}{f.name}.")
                continue
            name = prefix + f.name
            flag = "--" + prefix + f.name.replace("_", "-")
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="V",
                               help=f.metadata.get("help", ""))

    add(cls, "")


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The config an ``add_config_arguments`` parser's result describes (file < --set < flags)."""
    overrides: dict[str, Any] = parse_overrides(args.set or [])
    overrides.update({k: v for k, v in vars(args).items() if k not in ("config", "set")})  # flags given
    return load_config(cls, args.config, overrides)


def parse_config(cls: type[C], argv: list[str] | None = None, *, description: str = "") -> C:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))

"""Publishing trained checkpoints: the one path from a trainer's output folder to a Hub repository.

:func:`publish_checkpoint` checks the folder (safetensors only, headers that parse, no trainer state, no secrets),
keeps the card the trainer wrote (appending what publishing adds: benchmark metrics, the caller's notes, the redacted
training config when the config file itself cannot go) or writes one with :func:`~instantportrait.hub.cards.model_card`
when there is none, and uploads. ``DiffusionPipeline.push_to_hub`` would replace the card with a generic one.
"""

from __future__ import annotations

from pathlib import Path

from instantportrait.hub.cache import _files_under, _matches, verify_file
from instantportrait.hub.cards import card_sections, model_card

TRAINING_CONFIG_FILES = ("training_config.yaml", "training_config.yml", "training_config.json", "train_config.yaml",
                         "train_config.json", "config.yaml", "args.json")
# Never uploaded: trainer state (accelerate's checkpoint-*/, optimizer, lr-scheduler and RNG states), logs, partial
# files, caches. fnmatch semantics as in huggingface_hub: `*` also matches `/`.
PUBLISH_IGNORE = ("checkpoint-*", "checkpoints/*", "logs/*", "*optimizer*", "scheduler.bin", "*random_states*",
                  "*.pkl", "*.part", "*.incomplete", ".git/*", "*__pycache__*", ".cache/*", "*.DS_Store")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SECRET_WORDS = ("token", "password", "secret", "api_key", "apikey", "credential")
IPNET_CLASS = "InstantPortraitPipeline"
IDENET_CLASS = "StableDiffusionInstructPix2PixPipeline"
# Everything after this line in a README was added by publishing; publishing again replaces it instead of stacking.
PUBLISHED_MARK = "<!-- instantportrait: added when published -->"


def read_training_config(folder: str | Path, *, redact: bool = True) -> tuple[dict, Path | None]:
    """The training configuration a trainer saved next to its checkpoint (first of :data:`TRAINING_CONFIG_FILES`),
    with secrets (values of keys naming tokens, passwords, ...) redacted; ``({}, None)`` when there is none."""
    import json

    import yaml

    folder = Path(folder)
    for name in TRAINING_CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"the training config {path} does not parse ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"the training config {path} is not a mapping of settings")
        return (_redact(data) if redact else data), path
    return {}, None


def _is_secret(key) -> bool:
    return any(w in str(key).lower() for w in _SECRET_WORDS)


def _redact(value):
    if isinstance(value, dict):
        return {k: ("<redacted>" if _is_secret(k) and v else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _secret_values(value) -> list[str]:
    """The strings :func:`_redact` hides, so that a card quoting one of them can be scrubbed before it is uploaded."""
    if isinstance(value, dict):
        return [s for k, v in value.items()
                for s in ([v] if _is_secret(k) and isinstance(v, str) and len(v) >= 6 else _secret_values(v))]
    if isinstance(value, list):
        return [s for v in value for s in _secret_values(v)]
    return []


def load_metrics(path: str | Path, max_entries: int = 60) -> dict[str, float | int | str]:
    """Metrics for a model card from a benchmark summary JSON.

    Accepted shapes: ``{"metrics": {...}}``; a flat ``{name: value}``; nested ``{group: {name: value}}`` (flattened
    to ``group/name``); a list of rows (``[{"method": "ipnet", "clip_t": 0.3, ...}, ...]``, flattened to
    ``method/name``). Only numbers and short strings are kept, at most ``max_entries``.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"metrics file {path} is not valid JSON ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("metrics"), (dict, list)):
        data = data["metrics"]
    out: dict[str, float | int | str] = {}

    def keep(key: str, value) -> None:
        if len(out) >= max_entries or isinstance(value, bool):
            return
        if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 40):
            out[key] = value

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            keep(prefix, value)

    if isinstance(data, list):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                continue
            label = str(row.get("method", row.get("name", i)))
            for k, v in row.items():
                if k not in ("method", "name"):
                    walk(f"{label}/{k}", v)
    elif isinstance(data, dict):
        walk("", data)
    else:
        raise ValueError(f"metrics file {path} holds a {type(data).__name__}, expected an object or a list of rows")
    if not out:
        raise ValueError(f"metrics file {path} holds no numeric metrics")
    return out


def _data_description(training: dict) -> str | None:
    """A sentence about the training data from the config's data-related settings, if any."""
    if isinstance(training.get("data"), str):
        return training["data"]
    items = {k: v for k, v in training.items() if "data" in str(k).lower() and not isinstance(v, dict)}
    if isinstance(training.get("data"), dict):
        items.update({f"data.{k}": v for k, v in training["data"].items() if not isinstance(v, dict)})
    if not items:
        return None
    return "Training data settings: " + "; ".join(f"`{k}` = `{v}`" for k, v in items.items()) + "."



def checkpoint_kind(folder: str | Path) -> str:
    """``"ipnet"`` for an InstantPortraitPipeline folder, ``"idenet"`` for an InstructPix2Pix-format folder."""
    import json

    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a diffusers checkpoint folder (no model_index.json): pass the folder "
                         "the trainer saved its final pipeline to")
    cls = json.loads(index.read_text()).get("_class_name")
    if cls == IPNET_CLASS:
        return "ipnet"
    if cls == IDENET_CLASS:
        return "idenet"
    raise ValueError(f"{folder} holds a {cls} checkpoint; publish_checkpoint publishes {IPNET_CLASS} (IPNet) or "
                     f"{IDENET_CLASS} (IDE-Net) folders")


def checkpoint_card_info(folder: str | Path, repo_id: str | None = None, card_info: dict | None = None,
                         metrics_file: str | Path | None = None) -> dict:
    """Everything known about a checkpoint for its card: the folder's saved card facts, the training config the
    trainer saved there, the benchmark metrics, then ``card_info`` (explicit values win)."""
    import json

    folder = Path(folder)
    info: dict = {}
    saved = folder / "instantportrait_card.json"
    if saved.is_file():
        info.update(json.loads(saved.read_text()))
    training, _ = read_training_config(folder)
    if training:
        info["training"] = training
        data = _data_description(training)
        if data:
            info["data"] = data
    if metrics_file is not None:
        info["metrics"] = load_metrics(metrics_file)
    info.update(card_info or {})
    if repo_id:
        info["repo_id"] = repo_id
        info.setdefault("name", repo_id.rsplit("/", 1)[-1])
    return info


def published_card(folder: str | Path, kind: str, info: dict, additions: dict) -> str:
    """The README to publish. The card the trainer wrote in ``folder`` is kept word for word (its ``PATH_OR_REPO``
    placeholder filled in with ``info["repo_id"]``) and ``additions`` (the fact sections of
    :func:`~instantportrait.hub.cards.card_sections`, and ``notes``) are appended after :data:`PUBLISHED_MARK`;
    without a trainer's card, the card is built from ``info`` for ``kind``."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return model_card({**info, "kind": kind})
    text = readme.read_text().split(PUBLISHED_MARK, 1)[0].rstrip() + "\n"
    if info.get("repo_id"):
        text = text.replace("PATH_OR_REPO", info["repo_id"])
    extra = card_sections(additions)
    if additions.get("notes"):
        extra += ["## Notes", str(additions["notes"]), ""]
    return "\n".join([text, PUBLISHED_MARK, *extra]) if extra else text


def publish_checkpoint(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
                       card_info: dict | None = None, metrics_file: str | Path | None = None,
                       token: str | None = None, api=None) -> str:
    """Upload a trained checkpoint folder to the Hub with its model card; returns the commit URL.

    ``folder`` is an IPNet pipeline folder (``InstantPortraitPipeline.save_pretrained``) or an IDE-Net folder in
    InstructPix2Pix format. The card the trainer wrote there (``README.md``) is kept and published with, appended
    (see :func:`published_card`), the benchmark metrics of ``metrics_file``, the sections ``card_info`` gives
    (``data``, ``training``, ``metrics``, ``sections``, ``notes``) and the redacted training config when the config
    file holds secrets and is therefore not uploaded. A folder without a card gets one built from its
    ``instantportrait_card.json``, the training config saved there (:data:`TRAINING_CONFIG_FILES`, secrets
    redacted), ``metrics_file`` and ``card_info`` (wins). Weights must be safetensors (pickled ``.bin``/``.pt`` files
    are refused) and every safetensors header must parse. Trainer state (``checkpoint-*/``, optimizer, logs) is not
    uploaded. ``revision`` uploads to that branch (created if needed). ``api`` defaults to
    ``huggingface_hub.HfApi(token=token)``; pass a stand-in to test without network.

    Load it back with ``InstantPortraitPipeline.from_pretrained(repo_id, revision=...)`` (IPNet) or
    ``StableDiffusionInstructPix2PixPipeline.from_pretrained(repo_id, revision=...)`` (IDE-Net).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'user/name', got {repo_id!r}")
    kind = checkpoint_kind(folder)
    ignore = list(PUBLISH_IGNORE)
    raw_config, config_path = read_training_config(folder, redact=False)
    secrets = _secret_values(raw_config)
    if config_path is not None and _redact(raw_config) != raw_config:
        ignore.append(config_path.name)  # it holds secrets: the card carries the redacted copy instead
    files = [p for p in _files_under(folder) if not _matches(p, ignore)]
    pickles = [p for p in files if p.endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f"{folder} holds pickled weights ({', '.join(pickles[:5])}); publish safetensors only "
                         "(save with safe_serialization=True) or move them out")
    bad = [f"{p}: {why}" for p in files if p.endswith(".safetensors") and (why := verify_file(folder / p))]
    if bad:
        raise ValueError(f"{folder} has unreadable weights: {'; '.join(bad)}")
    info = checkpoint_card_info(folder, repo_id, card_info, metrics_file)
    additions = dict(card_info or {})
    if metrics_file is not None:
        additions["metrics"] = info["metrics"]
    if config_path is not None and config_path.name in ignore and info.get("training"):
        additions.setdefault("training", info["training"])
    card = published_card(folder, kind, info, additions)
    for secret in secrets:
        card = card.replace(secret, "<redacted>")
    (folder / "README.md").write_text(card)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                               commit_message=f"Upload {'IPNet' if kind == 'ipnet' else 'IDE-Net'} checkpoint",
                               ignore_patterns=ignore)
    return str(getattr(commit, "commit_url", commit))

"""Edit instructions for the paired dataset: templates over the poster's categories, or a user file.

Every instruction comes with a *target caption* (what the edited portrait shows, for the CLIP-T filter) and a
category. The templates cover the categories the InstantPortrait poster shows (README "Training", step 1):

* ``accessories``: hipster glasses, headset, snorkel mask (and the crowns / face paint of the poster's prompts);
* ``facial_hair``: mustache (and a beard);
* ``clothing``: plaid shirt, vintage tee, beaded dress, riot gear, leather armor, royal clothing, ...;
* ``hair``: unruly, curled, feathered headband;
* ``era_style``: 90s gamer / computer-geek yearbook photo, 1920s flapper, Victorian queen in a Rococo painting,
  cyberpunk, neonpunk with magenta highlights;
* ``background``: blue drape, forest with wolves, coral reef underwater, ...;

plus ``combo`` instructions that join two or three categories the way the poster's prompts do ("90s gamer yearbook
photo, with headset, blue drape background").

:func:`template_instructions` is a pure function of its arguments: the same seed gives the same list (Python's
``random.Random`` seeded with a string is stable across runs and platforms). :func:`load_instructions` reads a JSONL,
JSON or YAML file of ``{instruction, target_caption, category}`` records instead.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instantportrait.jsonl import jsonl_records

CATEGORIES: tuple[str, ...] = ("accessories", "facial_hair", "clothing", "hair", "era_style", "background")
COMBO = "combo"
# Subjects of the target caption for concepts that do not set the whole scene (every category but era_style).
SUBJECTS: tuple[str, ...] = ("a portrait photo of a person", "a photo of a person", "a close-up portrait of a person")


@dataclass(frozen=True)
class EditInstruction:
    """One edit: the instruction given to the editor, the caption its result should match, its category."""

    instruction: str
    target_caption: str
    category: str
    concepts: tuple[str, ...] = ()  # template concept names (empty for instructions read from a file)

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "target_caption": self.target_caption, "category": self.category,
                "concepts": list(self.concepts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditInstruction:
        return cls(str(data["instruction"]), str(data["target_caption"]), str(data["category"]),
                   tuple(str(c) for c in data.get("concepts") or ()))


@dataclass(frozen=True)
class Concept:
    """One thing an edit adds.

    ``phrases`` are paraphrases of its noun phrase for instructions; ``caption`` is its piece of the target caption:
    a trailing fragment ("wearing hipster glasses") or, for ``era_style``, the whole subject ("a 1920s flapper
    portrait of a person"). ``verbs`` (templates with ``{p}``) override the category's instruction verbs.
    """

    name: str
    phrases: tuple[str, ...]
    caption: str
    verbs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Category:
    name: str
    verbs: tuple[str, ...]  # instruction templates, ``{p}`` = a phrase of the concept
    concepts: tuple[Concept, ...] = field(default_factory=tuple)
    sets_subject: bool = False  # era_style: the concept's caption is the whole subject of the target caption


TEMPLATES: tuple[Category, ...] = (
    Category("accessories", ("add {p}", "make the person wear {p}", "put {p} on them", "give them {p}"), (
        Concept("hipster glasses", ("hipster glasses", "thick-rimmed hipster glasses", "a pair of hipster glasses"),
                "wearing hipster glasses"),
        Concept("headset", ("a headset", "a gaming headset", "a big over-ear headset"), "wearing a gaming headset"),
        Concept("snorkel mask", ("a snorkel mask", "a red snorkel mask", "a diving mask with a snorkel"),
                "wearing a snorkel mask"),
        Concept("gemstone crown", ("a delicate gemstone crown", "a jewelled crown"), "wearing a gemstone crown"),
        Concept("wolf-teeth crown", ("a crown of wolf teeth and fur", "a tribal crown of wolf teeth"),
                "wearing a crown of wolf teeth and fur"),
        Concept("tribal face paint", ("tribal face paint", "tribal war paint"), "with tribal face paint",
                verbs=("add {p}", "paint {p} on their face", "give them {p}")),
    )),
    Category("facial_hair", ("add {p}", "give the person {p}", "make them grow {p}"), (
        Concept("mustache", ("a mustache", "a thick mustache", "a handlebar mustache"), "with a mustache"),
        Concept("beard", ("a full beard", "a short beard"), "with a beard"),
    )),
    Category("clothing", ("make them wear {p}", "dress them in {p}", "change the outfit to {p}", "put them in {p}"), (
        Concept("plaid shirt", ("a plaid shirt", "a flannel plaid shirt"), "wearing a plaid shirt"),
        Concept("vintage tee", ("a vintage tee", "a vintage t-shirt", "a 90's t-shirt"), "wearing a vintage t-shirt"),
        Concept("pocket protector",
                ("a shirt with a pocket protector", "a short-sleeved shirt with a pocket protector"),
                "wearing a shirt with a pocket protector"),
        Concept("beaded dress", ("a beaded dress", "a sparkling beaded dress"), "wearing a beaded dress"),
        Concept("riot gear", ("gritty riot gear", "battered riot gear"), "wearing gritty riot gear"),
        Concept("leather armor", ("leather armor", "fur and leather armor"), "wearing fur and leather armor"),
        Concept("royal clothing", ("elaborate royal clothing", "ornate royal robes"),
                "wearing elaborate royal clothing"),
        Concept("scuba suit", ("a blue and black scuba diving suit", "a wetsuit"), "wearing a scuba diving suit"),
    )),
    Category("hair", ("give them {p}", "change their hair to {p}", "make their hair look like {p}"), (
        Concept("unruly hair", ("unruly hair", "wild, unruly hair", "messy hair"), "with unruly hair"),
        Concept("curled hair", ("curled hair", "tight curls", "1920s finger-waved curls"), "with curled hair"),
        Concept("feathered headband", ("a feathered headband", "a feathered headband with metallic details"),
                "wearing a feathered headband", verbs=("add {p}", "put {p} in their hair", "give them {p}")),
    )),
    Category("era_style",
             ("turn this into {p}", "make it {p}", "restyle the portrait as {p}", "transform it into {p}"), (
        Concept("90s gamer yearbook", ("a 90s gamer yearbook photo", "a 1990s gamer yearbook picture"),
                "a 90s gamer yearbook photo of a person"),
        Concept("90s computer geek yearbook", ("a 90s computer geek yearbook photo", "a 1990s computer nerd yearbook "
                                               "photo"), "a 90s computer geek yearbook photo of a person"),
        Concept("1920s flapper", ("a 1920s flapper look", "a roaring twenties flapper portrait"),
                "a 1920s flapper portrait of a person"),
        Concept("victorian queen rococo", ("a Victorian queen in a Rococo painting", "a Rococo painting of a Victorian "
                                           "queen"), "a Rococo painting of a person as a Victorian queen"),
        Concept("cyberpunk", ("a cyberpunk character", "a cyberpunk character in a megacity"),
                "a cyberpunk portrait of a person"),
        Concept("neonpunk", ("a neonpunk, ultramodern portrait with magenta highlights and dark purple shadows",
                             "neonpunk style with magenta highlights"),
                "a neonpunk portrait of a person with magenta highlights and dark purple shadows"),
        Concept("wolf god", ("the Wolf God", "a tribal Wolf God"), "a portrait of a person as the Wolf God"),
    ), sets_subject=True),
    Category("background", ("change the background to {p}", "replace the background with {p}",
                            "put them in front of {p}"), (
        Concept("blue drape", ("a blue drape", "a blue-colored drape", "a blue studio drape"),
                "in front of a blue drape background"),
        Concept("forest with wolves", ("a forest with wolves", "a dark forest with a pack of wolves"),
                "standing in a forest with wolves"),
        Concept("coral reef", ("a coral reef underwater", "an underwater coral reef with bubbles"),
                "underwater in front of a coral reef"),
        Concept("cyberpunk megacity", ("a cyberpunk megacity", "a neon-lit cyberpunk city at night"),
                "in a cyberpunk megacity"),
    )),
)


def _category(name: str) -> Category:
    for cat in TEMPLATES:
        if cat.name == name:
            return cat
    raise KeyError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}")


def _one(rng: random.Random, cat: Category, concept: Concept) -> tuple[str, str]:
    """(instruction, caption fragment or subject) for one concept, drawn with ``rng``."""
    verb = rng.choice(concept.verbs or cat.verbs)
    phrase = rng.choice(concept.phrases)
    return verb.format(p=phrase), concept.caption


def _caption(rng: random.Random, parts: list[tuple[Category, Concept]]) -> str:
    subjects = [c.caption for cat, c in parts if cat.sets_subject]
    subject = subjects[0] if subjects else rng.choice(SUBJECTS)
    fragments = [c.caption for cat, c in parts if not cat.sets_subject]
    if not fragments:
        return subject
    return subject + (", " if subjects else " ") + ", ".join(fragments)


def _join(instructions: list[str]) -> str:
    return instructions[0] if len(instructions) == 1 else ", ".join(instructions[:-1]) + " and " + instructions[-1]


def template_instructions(seed: int = 0, paraphrases: int = 3, combos: int = 12,
                          categories: tuple[str, ...] = CATEGORIES) -> list[EditInstruction]:
    """Instructions from the templates: ``paraphrases`` per concept of every category (fewer where a concept has fewer
    verb x phrase combinations), then ``combos`` distinct multi-edit instructions (an optional era/style, then one or
    two other categories).

    Deterministic: a function of the arguments only. Order: category by category, concept by concept (as in
    :data:`TEMPLATES`), then the combos.
    """
    if paraphrases < 1:
        raise ValueError(f"paraphrases must be >= 1, got {paraphrases}")
    if combos < 0:
        raise ValueError(f"combos must be >= 0, got {combos}")
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    rng = random.Random(f"instantportrait-instructions:{seed}")
    out: list[EditInstruction] = []
    seen: set[str] = set()

    def add(item: EditInstruction) -> None:
        if item.instruction not in seen:
            seen.add(item.instruction)
            out.append(item)

    for name in categories:
        cat = _category(name)
        for concept in cat.concepts:
            candidates = sorted({(v.format(p=p)) for v in (concept.verbs or cat.verbs) for p in concept.phrases})
            for text in rng.sample(candidates, min(paraphrases, len(candidates))):
                add(EditInstruction(text, _caption(rng, [(cat, concept)]), cat.name, (concept.name,)))
    others = [c for c in categories if c != "era_style"]
    made, attempts = 0, 0
    while made < combos and attempts < 50 * combos:  # draw until `combos` distinct ones (capped: tiny category sets)
        attempts += 1
        parts: list[tuple[Category, Concept]] = []
        if "era_style" in categories and rng.random() < 0.5:
            era = _category("era_style")
            parts.append((era, rng.choice(era.concepts)))
        k = min(len(others), rng.choice((1, 2)) if parts else 2)
        for name in sorted(rng.sample(others, k), key=CATEGORIES.index):
            cat = _category(name)
            parts.append((cat, rng.choice(cat.concepts)))
        if len(parts) < 2:
            continue  # only one category chosen: not a combination
        texts = [_one(rng, cat, concept)[0] for cat, concept in parts]
        before = len(out)
        add(EditInstruction(_join(texts), _caption(rng, parts), COMBO, tuple(c.name for _, c in parts)))
        made += len(out) - before
    return out


def _check_record(record: Any, where: str) -> EditInstruction:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a mapping with instruction, target_caption and category, "
                         f"got {type(record).__name__}")
    missing = [k for k in ("instruction", "target_caption", "category")
               if not isinstance(record.get(k), str) or not record[k].strip()]
    if missing:
        raise ValueError(f"{where}: missing or empty {', '.join(missing)} (each record needs a non-empty "
                         "instruction, target_caption and category)")
    concepts = record.get("concepts") or ()
    if isinstance(concepts, str):
        concepts = (concepts,)
    return EditInstruction(record["instruction"].strip(), record["target_caption"].strip(),
                           record["category"].strip(), tuple(str(c) for c in concepts))


def load_instructions(path: str | Path) -> list[EditInstruction]:
    """Read ``{instruction, target_caption, category}`` records from a ``.jsonl``, ``.json`` or ``.yaml``/``.yml``
    file (a list, or a mapping with an ``instructions`` list). One clear ``ValueError`` per bad record, naming its
    line (JSONL) or index. Duplicated instructions are an error (row ids are derived from the instruction text)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"instructions file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    items: list[EditInstruction] = []
    if path.suffix.lower() == ".jsonl":
        for lineno, record in jsonl_records(text.splitlines(), path):
            items.append(_check_record(record, f"{path}:{lineno}"))
    else:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        elif path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        else:
            raise ValueError(f"{path}: unsupported instructions file type {path.suffix!r} (use .jsonl, .json, .yaml)")
        if isinstance(data, dict) and "instructions" in data:
            data = data["instructions"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of records (or a mapping with an 'instructions' list)")
        items = [_check_record(r, f"{path}: record {i}") for i, r in enumerate(data)]
    if not items:
        raise ValueError(f"{path}: no instructions in the file")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.instruction in seen:
            raise ValueError(f"{path}: instruction {item.instruction!r} appears twice (records {seen[item.instruction]}"
                             f" and {i}); each instruction must be unique")
        seen[item.instruction] = i
    return items

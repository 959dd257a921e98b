"""The demo world's language: how each edit is asked for and described.

Every edit has imperative phrasings ("add hipster glasses", "give them thick black-framed glasses", ...) and a
descriptive fragment ("with hipster glasses", "wearing a red hat", "in a forest", "as a sepia photograph").
Combinations are phrased like the poster's ("with hipster glasses and a mustache, wearing a plaid shirt") or as
joined imperatives. :func:`parse_instruction` maps any of these (and similar free text) back to the edits, so every
paraphrase of an instruction renders the same target (``World.render_target``); :func:`caption` describes a rendered
photo for the demo CLIP.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from instantportrait.demo.render import EDIT_DEFS, Edit, Identity, Scene, normalize_edits


@dataclass(frozen=True)
class EditPhrases:
    """How an edit is said. ``{c}`` stands for the edit's colour."""

    imperatives: tuple[str, ...]  # stand-alone instructions
    fragment: str  # the noun phrase / clause used in combinations and captions
    kind: str  # with | wearing | background | style


PHRASES: dict[str, EditPhrases] = {
    "glasses": EditPhrases(("add hipster glasses", "give them thick black-framed glasses",
                            "put nerdy black glasses on the person", "make the person wear hipster glasses"),
                           "hipster glasses", "with"),
    "sunglasses": EditPhrases(("add sunglasses", "give them dark sunglasses",
                               "put a pair of aviator sunglasses on the person", "make the person wear sunglasses"),
                              "dark sunglasses", "with"),
    "headset": EditPhrases(("add a headset", "give them a gaming headset with a microphone",
                            "put a headset on the person", "make them wear a call-center headset"),
                           "a gaming headset", "with"),
    "hat": EditPhrases(("add a {c} hat", "give them a big {c} hat", "put a {c} hat on their head",
                        "make the person wear a {c} fedora"), "a {c} hat", "wearing"),
    "mustache": EditPhrases(("add a mustache", "give them a thick mustache", "grow a bushy moustache",
                             "make the person have a mustache"), "a mustache", "with"),
    "beard": EditPhrases(("add a beard", "give them a full beard", "grow a thick beard", "make the person bearded"),
                         "a full beard", "with"),
    "shirt_color": EditPhrases(("change the shirt to {c}", "make the shirt {c}", "give them a {c} shirt",
                                "dress them in a {c} shirt"), "a {c} shirt", "wearing"),
    "plaid_shirt": EditPhrases(("put them in a plaid shirt", "change the shirt to a lumberjack plaid",
                                "give them a flannel plaid shirt", "dress the person in plaid"),
                               "a plaid shirt", "wearing"),
    "tshirt": EditPhrases(("put them in a vintage t-shirt", "change the shirt to a retro graphic tee",
                           "give them a vintage tee", "dress the person in a graphic t-shirt"),
                          "a vintage t-shirt", "wearing"),
    "blue_drape": EditPhrases(("change the background to a blue drape", "put a blue studio drape behind them",
                               "replace the backdrop with blue curtains",
                               "make the background a blue photo-studio drape"),
                              "in front of a blue drape", "background"),
    "forest": EditPhrases(("change the background to a forest", "put them in a pine forest",
                           "replace the background with woods", "make the background a green forest"),
                          "in a forest", "background"),
    "underwater": EditPhrases(("make it underwater", "put them underwater by a coral reef",
                               "change the background to a coral reef",
                               "replace the background with an underwater scene"),
                              "underwater by a coral reef", "background"),
    "yearbook": EditPhrases(("make it a grayscale yearbook photo",
                             "turn it into a 90s black and white yearbook picture",
                             "convert to monochrome like an old yearbook", "make the photo grayscale"),
                            "as a grayscale yearbook photo", "style"),
    "sepia": EditPhrases(("make it sepia", "turn it into an old sepia photograph", "give the photo a sepia tone",
                          "make it look like a faded sepia print"), "as a sepia photograph", "style"),
    "neon": EditPhrases(("make it neonpunk with magenta highlights", "turn it into a neon cyberpunk portrait",
                         "add neon magenta and cyan lighting", "give it a neonpunk style"),
                        "in neonpunk style with magenta highlights", "style"),
}
# Combinations in the spirit of the poster's examples; World draws half of its combinations from these.
CURATED_COMBOS: tuple[tuple[Edit, ...], ...] = (
    (Edit("glasses"), Edit("mustache"), Edit("plaid_shirt")),
    (Edit("glasses"), Edit("headset"), Edit("tshirt")),
    (Edit("glasses"), Edit("tshirt"), Edit("yearbook")),
    (Edit("sunglasses"), Edit("underwater")),
    (Edit("beard"), Edit("plaid_shirt"), Edit("forest")),
    (Edit("sunglasses"), Edit("neon")),
    (Edit("hat", "black"), Edit("mustache"), Edit("sepia")),
    (Edit("hat", "red"), Edit("blue_drape")),
)
_WITH_PREFIX = {"with": "with ", "wearing": "wearing "}

# Keyword rules of the parser, in the order edits are reported. Patterns apply to one clause at a time.
_RULES: tuple[tuple[str, str], ...] = (
    ("sunglasses", r"\bsun ?glasses\b|\bshades\b|\baviators\b"),
    ("glasses", r"(?<!sun )\b(?:eye)?glasses\b|\bspectacles\b"),
    ("headset", r"\bhead ?set\b|\bheadphones\b"),
    ("hat", r"\bhat\b|\bfedora\b|\bbeanie\b|\bcap\b"),
    ("beard", r"\bbeard(?:ed)?\b"),
    ("mustache", r"\bmo?ustaches?\b"),
    ("plaid_shirt", r"\bplaid\b|\bflannel\b|\btartan\b"),
    ("tshirt", r"\bt-shirt\b|\btee\b"),
    ("shirt_color", r"\bshirt\b|\bblouse\b|\bsweater\b"),
    ("blue_drape", r"\bdrapes?\b|\bcurtains?\b"),
    ("forest", r"\bforest\b|\bwoods\b|\btrees\b|\bwoodland\b"),
    ("underwater", r"\bunder ?water\b|\bcoral\b|\breef\b|\bocean\b|\bsea\b"),
    ("yearbook", r"\bgr[ae]yscale\b|\bblack-and-white\b|\bmonochrome\b|\byearbook\b"),
    ("sepia", r"\bsepia\b"),
    ("neon", r"\bneon\w*\b|\bcyberpunk\b|\bsynthwave\b"),
)
_CLAUSE_SPLIT = re.compile(r"[,;.]|\band\b|\bplus\b|\bwhile\b")


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _articles(text: str) -> str:
    """'a orange hat' -> 'an orange hat'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _fill(text: str, edit: Edit, colors: bool = True) -> str:
    if edit.color is None:
        return text
    return text.replace("{c}", edit.color) if colors else text.replace("{c} ", "").replace(" {c}", "")


def describe_edits(edits: Sequence[Edit]) -> str:
    """The poster-style description of a set of edits: 'with hipster glasses and a mustache, wearing a plaid shirt'."""
    edits = normalize_edits(edits)
    groups: dict[str, list[str]] = {"with": [], "wearing": [], "background": [], "style": []}
    for e in edits:
        ph = PHRASES[e.name]
        groups[ph.kind].append(_fill(ph.fragment, e))
    parts = [_WITH_PREFIX[k] + _join(groups[k]) for k in ("with", "wearing") if groups[k]]
    parts += groups["background"] + groups["style"]
    return _articles(", ".join(parts))


def instruction_paraphrases(edits: Sequence[Edit]) -> tuple[str, ...]:
    """All the instructions this world uses for ``edits`` (one edit: 4 imperatives + the descriptive phrase;
    several: the poster-style description, 3 joined imperatives, and 'turn this into a portrait ...')."""
    edits = normalize_edits(edits)
    if not edits:
        raise ValueError("an instruction needs at least one edit")
    if len(edits) == 1:
        e = edits[0]
        return tuple(_articles(_fill(t, e)) for t in PHRASES[e.name].imperatives) + (describe_edits(edits),)
    described = describe_edits(edits)
    joined = tuple(_articles(_join([_fill(PHRASES[e.name].imperatives[k], e) for e in edits])) for k in range(3))
    return (described,) + joined + (f"turn this into a portrait {described}",)


def _color_near(clause: str, noun_at: int, palette: Sequence[str]) -> str | None:
    """The palette colour word closest to the noun in the clause, preferring one before it."""
    found = [(m.start(), m.group(0)) for m in re.finditer(r"\b(" + "|".join(palette) + r")\b", clause)]
    before = [c for pos, c in found if pos < noun_at]
    if before:
        return before[-1]
    after = [c for pos, c in found if pos > noun_at]
    return after[0] if after else None


def parse_instruction(text: str) -> tuple[Edit, ...]:
    """Map an instruction in this world's language to its edits (canonical order).

    Raises ``ValueError`` when no known edit is named, when a hat or shirt colour is missing or unknown, or when two
    edits need the same slot ("glasses and sunglasses").
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("instruction must be a non-empty string")
    norm = text.lower().replace("black and white", "black-and-white").replace("t shirt", "t-shirt")
    found: dict[str, Edit] = {}
    for clause in _CLAUSE_SPLIT.split(norm):
        hits: dict[str, int] = {}
        for name, pattern in _RULES:
            m = re.search(pattern, clause)
            if m:
                hits[name] = m.start()
        if "shirt_color" in hits and ("plaid_shirt" in hits or "tshirt" in hits):
            del hits["shirt_color"]
        for name, pos in hits.items():
            colors = EDIT_DEFS[name].colors
            color = None
            if colors:
                color = _color_near(clause, pos, colors)
                if color is None:
                    raise ValueError(f"instruction {text!r}: say which colour for the {name.split('_')[0]}, one of "
                                     f"{list(colors)}")
            edit = Edit(name, color)
            slot = edit.definition.slot
            for other in found.values():
                if other.definition.slot == slot and other != edit:
                    raise ValueError(f"instruction {text!r} asks for both {other.key!r} and {edit.key!r}")
            found[edit.key] = edit
    if not found:
        raise ValueError(f"instruction {text!r} names no edit this world knows; known edits: {sorted(PHRASES)}")
    return normalize_edits(found.values())


def caption(identity: Identity, scene: Scene, edits: Sequence[Edit] = (), *, with_identity: bool = True) -> str:
    """A description of the rendered photo: 'a portrait photo of a person with tan skin, a round face, short black
    hair, brown eyes and hipster glasses, wearing a plaid shirt, in front of a plain beige backdrop'. Under a
    grayscale/sepia/neon style, colour words are dropped (they are not visible)."""
    edits = normalize_edits(edits)
    slots = {e.definition.slot: e for e in edits}
    style = slots.get("style")
    colors = style is None
    prefix = {None: "a portrait photo of a person", "yearbook": "a grayscale yearbook photo of a person",
              "sepia": "a sepia photograph of a person", "neon": "a neonpunk portrait of a person"}[
        style.name if style else None]
    with_list = identity.describe(colors=colors) if with_identity else []
    wearing: list[str] = []
    for e in edits:
        ph = PHRASES[e.name]
        if ph.kind == "with":
            with_list.append(_fill(ph.fragment, e, colors))
        elif ph.kind == "wearing":
            wearing.append(_fill(ph.fragment, e, colors))
    if "clothing" not in slots:
        wearing.append(f"a {scene.clothing} shirt" if colors else "a shirt")
    wearing.sort(key=lambda w: 0 if "hat" in w else 1)
    background = slots.get("background")
    if background is not None:
        place = PHRASES[background.name].fragment
    else:
        place = f"in front of a plain {scene.backdrop} backdrop" if colors else "in front of a plain backdrop"
    parts = [prefix + (f" with {_join(with_list)}" if with_list else ""), f"wearing {_join(wearing)}", place]
    if style is not None and style.name == "neon":
        parts.append("magenta and cyan neon highlights")
    return _articles(", ".join(parts))


__all__ = ["CURATED_COMBOS", "PHRASES", "EditPhrases", "caption", "describe_edits", "instruction_paraphrases",
           "parse_instruction"]

"""The synthetic portrait world: determinism, identity splits, edits landing where they should, landmarks,
instruction paraphrases, and the dataset exports the trainers read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantportrait.demo import (
    CURATED_COMBOS,
    EDIT_DEFS,
    PAIRS_FORMAT,
    SPLITS,
    Edit,
    World,
    instruction_paraphrases,
    normalize_edits,
    parse_instruction,
    render_portrait,
)
from instantportrait.demo.world import _ARCFACE_112

EVERY_EDIT = [Edit(name, d.colors[0] if d.colors else None) for name, d in EDIT_DEFS.items()]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=3, num_identities=20)


@pytest.fixture(scope="module")
def base(world):
    """A test-split sample rendered with masks, and its identity and scene."""
    s = world.sample("test", 0)
    return s, world.render(s.identity, s.scene, masks=True)


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes_and_different_seeds_differ():
    a, b = World(seed=5, num_identities=10), World(seed=5, num_identities=10)
    for split, i in (("train", 0), ("train", 7), ("test", 2)):
        sa, sb = a.sample(split, i), b.sample(split, i)
        assert png_bytes(sa.source) == png_bytes(sb.source)
        assert png_bytes(sa.target) == png_bytes(sb.target)
        assert (sa.instruction, sa.target_caption, sa.kps) == (sb.instruction, sb.target_caption, sb.kps)
    other = World(seed=6, num_identities=10).sample("train", 0)
    assert png_bytes(other.source) != png_bytes(a.sample("train", 0).source)
    assert png_bytes(a.sample("train", 1).source) != png_bytes(a.sample("train", 0).source)


def test_identities_do_not_depend_on_world_size():
    small, large = World(seed=2, num_identities=5), World(seed=2, num_identities=40)
    assert small.identities == large.identities[:5]


# ---------------------------------------------------------------------------------------------- splits
def test_splits_are_disjoint_complete_stable_and_sized():
    w = World(seed=1, num_identities=50)
    parts = {s: set(w.split_ids(s)) for s in SPLITS}
    assert not parts["train"] & parts["test"] and not parts["train"] & parts["validation"]
    assert not parts["validation"] & parts["test"]
    assert set().union(*parts.values()) == {i.identity_id for i in w.identities}
    assert [len(parts[s]) for s in SPLITS] == [40, 5, 5]
    assert {s: w.split_ids(s) for s in SPLITS} == {s: World(seed=1, num_identities=50).split_ids(s) for s in SPLITS}
    assert World(seed=4, num_identities=50).split_ids("test") != w.split_ids("test")


def test_samples_stay_in_their_split_and_cycle_through_every_identity(world):
    for split in SPLITS:
        ids = world.split_ids(split)
        seen = [s.identity_id for s in world.samples(split, len(ids))]
        assert sorted(seen) == sorted(ids)  # one full cycle: every identity exactly once
    train = set(world.split_ids("train"))
    assert all(s.identity_id not in train for s in world.samples("test", 6))
    labels = world.identity_labels("train")
    assert sorted(labels.values()) == list(range(len(train)))


def test_bad_arguments_raise_one_clear_error(world):
    with pytest.raises(ValueError, match="num_identities"):
        World(seed=0, num_identities=2)
    with pytest.raises(ValueError, match="edits"):
        World(seed=0, num_identities=10, edits=("glasses", "jetpack"))
    with pytest.raises(ValueError, match="split"):
        world.sample("dev", 0)
    with pytest.raises(ValueError, match="colour"):
        Edit("hat")
    with pytest.raises(ValueError, match="unknown edit"):
        Edit("jetpack")
    with pytest.raises(ValueError, match="eyewear"):
        normalize_edits([Edit("glasses"), Edit("sunglasses")])
    with pytest.raises(ValueError, match="size"):
        render_portrait(world.identities[0], world.sample("train", 0).scene, size=16)


def test_edit_subset_is_respected():
    w = World(seed=0, num_identities=10, edits=("glasses", "forest"), combo_prob=0.5)
    keys = {e.name for s in w.samples("train", 12) for e in s.edits}
    assert keys <= {"glasses", "forest"} and keys


# ---------------------------------------------------------------------------------------------- edits
def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(arr(a) - arr(b)).max(axis=2) > 8  # (H, W)


@pytest.mark.parametrize("edit", EVERY_EDIT, ids=lambda e: e.key)
def test_every_edit_changes_the_expected_region(world, base, edit):
    s, src = base
    out = world.render(s.identity, s.scene, [edit])
    diff = changed(src.image, out.image)
    assert diff.sum() > 80, f"{edit.key} barely changes the image"
    h, w = diff.shape
    ys, xs = np.nonzero(diff)
    x1, y1, x2, y2 = src.bbox
    face_h = y2 - y1
    kps = np.asarray(src.kps)
    eye_y, mouth_y = kps[:2, 1].mean(), kps[3:, 1].mean()
    person = arr(src.masks["person"])
    face = arr(src.masks["face"])
    category = edit.definition.category
    if category == "background":
        assert (person[ys, xs] < 128).mean() > 0.97  # changes land on the background
        assert diff[person == 0].mean() > 0.6  # and cover most of it
        assert not diff[person == 255].any()  # the person is untouched
    elif edit.name in ("glasses", "sunglasses"):
        band = (np.abs(ys - eye_y) < 0.22 * face_h) & (xs > x1 - 4) & (xs < x2 + 4)
        assert band.mean() > 0.97
        assert diff[np.round(kps[2:, 1]).astype(int), np.round(kps[2:, 0]).astype(int)].sum() == 0  # nose, mouth
    elif edit.name == "hat":
        assert (ys < eye_y).mean() > 0.98
    elif edit.name == "headset":
        assert (ys < mouth_y + 0.15 * face_h).mean() > 0.98
    elif category == "facial_hair":
        assert (ys > eye_y).mean() > 0.99 and (ys < y2 + 0.15 * face_h).mean() > 0.99
        assert not diff[np.round(kps[:2, 1]).astype(int), np.round(kps[:2, 0]).astype(int)].any()  # eyes
    elif category == "clothing":
        assert (ys > y2).mean() > 0.98  # below the chin
        assert not diff[face == 255].any()
    elif edit.name == "yearbook":
        a = arr(out.image)
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    elif edit.name == "sepia":
        a = arr(out.image)
        assert (a[..., 0] >= a[..., 1]).all() and (a[..., 1] >= a[..., 2]).all()
        assert diff.mean() > 0.5
    elif edit.name == "neon":
        a = arr(out.image)
        magenta = (a[..., 0] > 180) & (a[..., 2] > 150) & (a[..., 1] < 120)
        assert magenta.mean() > 0.01
        assert a[person == 0].mean() < arr(src.image)[person == 0].mean() * 0.7  # darkened surroundings
    assert h == w == world.config.size


def test_combination_applies_every_part(world, base):
    s, src = base
    combo = CURATED_COMBOS[0]  # hipster glasses, mustache, plaid shirt
    out = world.render(s.identity, s.scene, combo).image
    for part in combo:
        alone = changed(src.image, world.render(s.identity, s.scene, [part]).image)
        assert changed(src.image, out)[alone].mean() > 0.95


def test_edits_are_clear_at_64_pixels():
    w = World(seed=3, num_identities=20, size=64)
    s = w.sample("test", 0)
    for edit in EVERY_EDIT:
        assert changed(s.source, w.render(s.identity, s.scene, [edit]).image).sum() >= 20, edit.key


# ---------------------------------------------------------------------------------------------- landmarks
def test_landmarks_lie_on_the_face_inside_the_box(world):
    for s in world.samples("train", 12):
        r = world.render(s.identity, s.scene, masks=True)
        assert r.kps == s.kps and r.bbox == s.bbox
        x1, y1, x2, y2 = s.bbox
        kps = np.asarray(s.kps)
        assert ((kps[:, 0] > x1) & (kps[:, 0] < x2) & (kps[:, 1] > y1) & (kps[:, 1] < y2)).all()
        face = arr(r.masks["face"])
        assert (face[np.round(kps[:, 1]).astype(int), np.round(kps[:, 0]).astype(int)] > 200).all()
        assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0]  # image-left first
        assert kps[:2, 1].max() < kps[2, 1] < kps[3:, 1].min()  # eyes above nose above mouth
        assert 0 <= x1 and x2 < world.config.size and 0 <= y1 and y2 < world.config.size


def test_landmarks_scale_with_the_output_size():
    small, large = World(seed=3, num_identities=10, size=64), World(seed=3, num_identities=10, size=128)
    a, b = small.sample("train", 1), large.sample("train", 1)
    # pixel centres at integers: x_64 = (x_128 + 0.5) / 2 - 0.5
    assert np.allclose((np.asarray(b.kps) + 0.5) / 2 - 0.5, np.asarray(a.kps), atol=1e-6)


# ---------------------------------------------------------------------------------------------- language
def test_every_paraphrase_of_every_edit_parses_back():
    specs = [(Edit(n, c),) for n, d in EDIT_DEFS.items() for c in (d.colors or (None,))] + list(CURATED_COMBOS)
    specs.append((Edit("sunglasses"), Edit("hat", "orange"), Edit("shirt_color", "white"), Edit("forest")))
    for spec in specs:
        spec = normalize_edits(spec)
        paraphrases = instruction_paraphrases(spec)
        assert len(set(paraphrases)) == len(paraphrases) >= 5
        for text in paraphrases:
            assert parse_instruction(text) == spec, text
    assert instruction_paraphrases(CURATED_COMBOS[0])[0] == "with hipster glasses and a mustache, wearing a plaid shirt"


def test_paraphrases_render_the_same_target(world):
    samples = [world.sample("train", i) for i in range(40)]
    single = next(s for s in samples if len(s.edits) == 1)
    combo = next(s for s in samples if len(s.edits) > 1)
    for s in (single, combo):
        expected = png_bytes(s.target)
        assert s.instruction in s.paraphrases
        for text in s.paraphrases:
            assert png_bytes(world.render_target(s, text)) == expected, text


def test_parser_rejects_what_it_cannot_render():
    with pytest.raises(ValueError, match="names no edit"):
        parse_instruction("make it pretty")
    with pytest.raises(ValueError, match="both"):
        parse_instruction("add glasses and sunglasses")
    with pytest.raises(ValueError, match="colour"):
        parse_instruction("add a hat")
    assert parse_instruction("Add an ORANGE hat, and put them in front of blue curtains") == (
        Edit("hat", "orange"), Edit("blue_drape"))


def test_captions_describe_identity_and_edits(world):
    s = next(s for s in world.samples("train", 40) if any(e.name == "glasses" for e in s.edits) or
             s.category == "clothing")
    assert s.identity.skin_tone in s.source_caption
    frag = {"glasses": "hipster glasses", "plaid_shirt": "plaid shirt", "tshirt": "vintage t-shirt"}
    for e in s.edits:
        if e.name in frag:
            assert frag[e.name] in s.target_caption and frag[e.name] not in s.source_caption


# ---------------------------------------------------------------------------------------------- exports
def test_export_pairs_writes_a_valid_deterministic_dataset(world, tmp_path):
    meta = world.export_pairs(tmp_path / "a", "train", 5)
    folder = tmp_path / "a"
    on_disk = json.loads((folder / "dataset.json").read_text())
    assert on_disk == meta and meta["format"] == PAIRS_FORMAT
    assert meta["counts"] == {"total": 5, "passed_identity": 5, "passed_clip": 5, "passed": 5, "no_face": 0,
                              "failed": 0}
    assert meta["resolution"] == 128 and meta["seed"] == 3 and meta["thresholds"] == {"identity_sim": None,
                                                                                        "clip_t": None}
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5
    train = set(world.split_ids("train"))
    for r in rows:
        assert r["passed"] is True and r["identity_sim"] is None and r["clip_t"] is None and r["reject_reason"] is None
        assert r["identity_id"] in train and r["instruction"] in r["paraphrases"]
        assert len(r["source_kps"]) == 5 and len(r["source_bbox"]) == 4 and r["width"] == r["height"] == 128
        for key in ("source", "target"):
            with Image.open(folder / r[key]) as im:
                assert im.size == (128, 128) and im.mode == "RGB"
        assert r["source"].startswith("images/src/") and r["target"].startswith("images/tgt/")
        assert parse_instruction(r["instruction"]) == tuple(Edit(e["name"], e["color"]) for e in r["edits"])
    with pytest.raises(FileExistsError):
        world.export_pairs(folder, "train", 5)
    world.export_pairs(tmp_path / "b", "train", 5)
    assert (folder / "manifest.jsonl").read_bytes() == (tmp_path / "b" / "manifest.jsonl").read_bytes()
    assert (folder / rows[0]["target"]).read_bytes() == (tmp_path / "b" / rows[0]["target"]).read_bytes()
    world.export_pairs(folder, "test", 2, overwrite=True)
    assert len((folder / "manifest.jsonl").read_text().splitlines()) == 2
    assert len(list((folder / "images" / "tgt").iterdir())) == 2


def test_export_captions(world, tmp_path):
    meta = world.export_captions(tmp_path, "validation", 3)
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert meta["counts"]["total"] == len(rows) == 6
    assert [r["kind"] for r in rows] == ["source", "target"] * 3
    for r in rows:
        assert Path(tmp_path / r["image"]).is_file() and r["caption"].startswith("a ")
        assert r["identity_id"] in world.split_ids("validation")


def test_identity_crops_are_aligned_and_labelled(world):
    labels = world.identity_labels("train")
    crops = list(world.identity_crops("train", 6, crop_size=112, edit_prob=0.5))
    for c in crops:
        assert c.image.size == (112, 112) and labels[c.identity_id] == c.label
        residual = np.linalg.norm(np.asarray(c.kps) - _ARCFACE_112, axis=1)  # cartoon proportions: not exact
        assert residual.mean() < 4.0 and residual.max() < 7.0
    assert any(c.edits for c in crops) and any(not c.edits for c in crops)
    boxed = next(world.identity_crops("test", 1, crop_size=64, align="bbox"))
    assert boxed.image.size == (64, 64)
    with pytest.raises(ValueError, match="multiple of 112"):
        next(world.identity_crops("train", 1, crop_size=100))


def test_crop_warp_matches_the_training_alignment_and_moves_pixels_where_it_says():
    torch = pytest.importorskip("torch")
    from instantportrait.demo.render import Render
    from instantportrait.demo.world import _crop, similarity_matrix
    from instantportrait.training.losses import arcface_template, similarity_transform

    kps = np.array([[40.0, 50.0], [80.0, 48.0], [61.0, 70.0], [46.0, 92.0], [77.0, 90.0]])
    ours = similarity_matrix(kps, _ARCFACE_112)
    theirs = similarity_transform(torch.tensor(kps)[None], arcface_template(112, dtype=torch.float64))[0]
    assert np.allclose(ours, theirs.numpy(), atol=1e-6)
    img = np.zeros((128, 128, 3), np.uint8)
    img[49:52, 39:42] = 255  # a dot centred on the first landmark
    crop, warped = _crop(Render(Image.fromarray(img), (30.0, 30.0, 90.0, 100.0), tuple(map(tuple, kps))), 112,
                         "arcface")
    c = np.asarray(crop, np.float64)[..., 0]
    ys, xs = np.mgrid[0:112, 0:112]
    centre = np.array([(xs * c).sum(), (ys * c).sum()]) / c.sum()
    assert np.allclose(centre, warped[0], atol=0.3)

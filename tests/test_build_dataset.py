"""train/build_dataset.py and train/instructions.py: templates, plan, filters, resume after SIGKILL, shards + merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.faces import drawn_face as _drawn_face
from PIL import Image, ImageDraw

from instantportrait.methods import Editor, registry
from train import build_dataset as bd
from train.instructions import CATEGORIES, COMBO, TEMPLATES, EditInstruction, load_instructions, template_instructions

REPO = Path(__file__).resolve().parents[1]


def drawn_face(size: int, background: tuple[int, int, int], skin=(224, 172, 140)) -> Image.Image:
    return _drawn_face(size, background=background, skin=skin, eye_dx=25)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """3 drawn portraits (one a JPEG), a blank image, a corrupt .jpg, and files that are not sources."""
    folder = tmp_path_factory.mktemp("portraits")
    drawn_face(96, (70, 110, 160)).save(folder / "alice.png")
    drawn_face(80, (60, 140, 80), skin=(230, 180, 150)).save(folder / "bob.jpg", quality=95)
    drawn_face(72, (150, 70, 60)).save(folder / "carol.png")
    Image.new("RGB", (64, 64), (120, 120, 120)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


def tiny_args(sources: Path, out: Path, tiny_ip2p: Path, face_pack: Path, clip_file: Path, *extra: str) -> list[str]:
    return ["--sources", str(sources), "--out", str(out), "--generator-model", str(tiny_ip2p), "--steps", "2",
            "--resolution", "64", "--face-pack", str(face_pack), "--det-size", "160", "--clip", str(clip_file),
            "--instructions-per-source", "4", "--batch-size", "2", "--no-progress", *extra]


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / bd.MANIFEST).read_text().splitlines()]


# --------------------------------------------------------------------------------------------- instructions
def test_templates_are_deterministic_and_cover_every_category():
    a, b = template_instructions(seed=0), template_instructions(seed=0)
    assert a == b
    assert [x.instruction for x in template_instructions(seed=1)] != [x.instruction for x in a]
    assert {x.category for x in a} == set(CATEGORIES) | {COMBO}
    every_concept = {c.name for cat in TEMPLATES for c in cat.concepts}
    assert every_concept <= {name for x in a for name in x.concepts}
    for poster_item in ("hipster glasses", "headset", "snorkel mask", "mustache", "plaid shirt", "beaded dress",
                        "riot gear", "leather armor", "royal clothing", "unruly hair", "feathered headband",
                        "1920s flapper", "Rococo", "cyberpunk", "neonpunk", "blue", "wolves", "coral reef"):
        assert any(poster_item.lower() in x.instruction.lower() for x in a), poster_item
    assert all(x.instruction.strip() and x.target_caption.strip() for x in a)
    assert len({x.instruction for x in a}) == len(a)  # ids are derived from the instruction: no duplicates
    combos = [x for x in a if x.category == COMBO]
    assert len(combos) == 12 and all(len(x.concepts) >= 2 for x in combos)
    # Paraphrases: 3 different instructions for one concept, all with that concept's caption.
    glasses = [x for x in a if x.concepts == ("hipster glasses",)]
    assert len(glasses) == 3 and len({x.target_caption.split(" wearing ")[1] for x in glasses}) == 1
    only_hair = template_instructions(seed=0, paraphrases=1, combos=0, categories=("hair",))
    assert [x.category for x in only_hair] == ["hair"] * 3
    with pytest.raises(ValueError, match="paraphrases"):
        template_instructions(paraphrases=0)
    with pytest.raises(ValueError, match="unknown categories"):
        template_instructions(categories=("hats",))


def test_instruction_files(tmp_path):
    records = [{"instruction": "add a red hat", "target_caption": "a person wearing a red hat", "category": "hats"},
               {"instruction": "make it snowy", "target_caption": "a person in the snow", "category": "background"}]
    jsonl = tmp_path / "i.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    yaml_file = tmp_path / "i.yaml"
    yaml_file.write_text("instructions:\n" + "".join(
        f"  - instruction: {r['instruction']}\n    target_caption: {r['target_caption']}\n"
        f"    category: {r['category']}\n" for r in records))
    expected = [EditInstruction(r["instruction"], r["target_caption"], r["category"]) for r in records]
    assert load_instructions(jsonl) == expected
    assert load_instructions(yaml_file) == expected
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + json.dumps({"instruction": "add a hat", "category": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing or empty target_caption"):
        load_instructions(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[0]) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        load_instructions(dup)


# --------------------------------------------------------------------------------------------- plan
def test_plan_is_a_pure_function_and_rows_have_stable_seeds():
    instructions = [x.to_dict() for x in template_instructions(seed=0, paraphrases=1, combos=2)]
    config = bd.BuildConfig(source_files=["a.png", "b/c.jpg", "b/c.png"], instructions=instructions,
                            instructions_per_source=3, seed=5)
    plan = bd.plan_rows(config)
    assert plan == bd.plan_rows(config)
    assert len(plan) == 9 and len({r.id for r in plan}) == 9
    assert [r.index for r in plan] == list(range(9))
    assert {r.source_key for r in plan} == {"a", "b__c", "b__c_png"}  # same stem, different suffix: still unique
    # Each row's seed depends only on (seed, id), and each source draws its own instructions.
    assert all(r.seed == bd.row_seed(5, r.id) for r in plan)
    assert bd.row_seed(5, plan[0].id) != bd.row_seed(6, plan[0].id)
    per_source = {}
    for r in plan:
        per_source.setdefault(r.source_file, []).append(r.instruction.instruction)
    assert len({tuple(v) for v in per_source.values()}) > 1
    # Sharding is a partition, by index modulo the number of shards.
    shards = [bd.shard_rows(plan, 2, i) for i in range(2)]
    assert sorted(r.index for s in shards for r in s) == list(range(9))
    assert all(r.index % 2 == 1 for r in shards[1])
    limited = bd.plan_rows(bd.BuildConfig(**{**config.__dict__, "limit": 4}))
    assert limited == plan[:4]


def test_part_file_repairs_a_torn_tail_and_is_locked(tmp_path):
    part = bd.PartFile(tmp_path / "parts" / "part-00000-of-00001.jsonl")
    assert part.open() == []
    row = {k: None for k in bd.ROW_KEYS} | {"id": "a-1", "passed": False}
    part.append([row, row | {"id": "a-2"}])
    part.close()
    with open(part.path, "ab") as f:
        f.write(b'{"id": "a-3", "source": "ima')  # a write cut by a crash
    assert [r["id"] for r in bd.read_part_rows(part.path)] == ["a-1", "a-2"]  # readers skip the torn tail
    assert [r["id"] for r in part.open()] == ["a-1", "a-2"]
    assert part.path.read_bytes().endswith(b"\n") and part.path.read_bytes().count(b"\n") == 2
    with pytest.raises(bd.BuildError, match="locked"):
        bd.PartFile(part.path).open()
    part.close()


def test_shard_from_environment():
    assert bd.shard_from_environment({}) == (1, 0, None)
    assert bd.shard_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) == (1, 0, None)
    assert bd.shard_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})[:2] == (4, 3)
    assert bd.shard_from_environment({"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2"})[:2] == (3, 2)
    with pytest.raises(bd.BuildError, match="RANK"):
        bd.shard_from_environment({"WORLD_SIZE": "2", "RANK": "2"})


# --------------------------------------------------------------------------------------------- a full run
class PaintEditor(Editor):
    """A test generator that keeps the face findable: paints a bar of a seeded colour at a seeded height, so some
    targets keep the identity (bar on the background) and some lose it (bar over the eyes)."""

    name = "test-paint"
    label = "test paint"

    def _load(self):
        return True

    def nfe(self, settings=None):
        return 1

    def _edit(self, loaded, images, instructions, seed, settings, progress):
        out = []
        for image, gen in zip(images, self.generators(len(images), seed)):
            u = torch.rand(4, generator=gen).tolist()
            image = image.copy()
            w, h = image.size
            y = int(u[0] * h * 0.85)
            ImageDraw.Draw(image).rectangle([0, y, w, y + h // 7], fill=tuple(int(v * 255) for v in u[1:]))
            out.append(image)
        return out


def test_full_run_records_every_row_with_scores_and_counts(sources, tmp_path, tiny_face_pack, tiny_clip_file,
                                                           monkeypatch, capsys):
    monkeypatch.setitem(registry._EDITORS, PaintEditor.name, PaintEditor)
    out = tmp_path / "pairs"
    rc = bd.main(["--sources", str(sources), "--out", str(out), "--generator", "test-paint", "--resolution", "64",
                  "--face-pack", str(tiny_face_pack), "--det-size", "160", "--clip", str(tiny_clip_file),
                  "--instructions-per-source", "6", "--min-identity", "0.9", "--min-clip-t", "-0.02",
                  "--batch-size", "3", "--no-progress"])
    assert rc == 0
    rows = read_manifest(out)
    info = json.loads((out / bd.DATASET_JSON).read_text())
    assert len(rows) == 5 * 6 and len({r["id"] for r in rows}) == 30
    assert [list(r) for r in rows] == [list(bd.ROW_KEYS)] * 30
    by_source = {}
    for r in rows:
        by_source.setdefault(r["id"].rsplit("-", 1)[0], []).append(r)
    assert sorted(by_source) == ["alice", "blank", "bob", "broken", "carol"]  # sorted sources; .txt / hidden skipped
    for r in by_source["broken"]:  # the corrupt file is recorded, not dropped
        assert r["reject_reason"] == "unreadable_source" and r["source"] is None and r["target"] is None
    for r in by_source["blank"]:
        assert r["reject_reason"] == "no_face_in_source" and r["target"] is None
        assert r["source"] == "images/src/blank.png" and (out / r["source"]).is_file()
    generated = [r for k in ("alice", "bob", "carol") for r in by_source[k]]
    for r in generated:
        assert r["target"] == f"images/tgt/{r['id']}.png"
        target = Image.open(out / r["target"])
        assert target.size == (r["width"], r["height"]) == Image.open(out / r["source"]).size == (64, 64)
        x1, y1, x2, y2 = r["source_bbox"]
        assert len(r["source_kps"]) == 5 and all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in r["source_kps"])
        assert isinstance(r["clip_t"], float)
        if r["identity_sim"] is None:
            assert r["reject_reason"] == "no_face_in_target"
        expect_pass = r["identity_sim"] is not None and r["identity_sim"] >= 0.9 and r["clip_t"] >= -0.02
        assert r["passed"] == expect_pass
        assert (r["reject_reason"] is None) == expect_pass
    sims = [r["identity_sim"] for r in generated if r["identity_sim"] is not None]
    # The bar sometimes misses the face (identity kept: cosine ~1) and sometimes covers it.
    assert max(sims) > 0.99 and min(sims) < 0.9
    assert any(r["passed"] for r in rows) and any(r["reject_reason"] == "low_identity" for r in rows)
    # dataset.json: thresholds and counts consistent with the rows.
    assert info["format"] == "instantportrait-pairs/1"
    assert info["thresholds"] == {"identity_sim": 0.9, "clip_t": -0.02}
    assert info["resolution"] == 64 and info["seed"] == 0 and info["generator"]["name"] == "test-paint"
    assert info["face_model"]["recognition_model"] == "w_tiny.onnx" and info["clip"]["weights"] == tiny_clip_file.name
    assert info["face_model"]["evaluation_backend"] == "insightface:buffalo_l"  # the filter's model vs the judge's
    assert info["face_model"]["same_as_evaluation"] is False
    counts = info["counts"]
    assert counts["total"] == 30 and counts["passed"] == sum(r["passed"] for r in rows)
    assert counts["passed_identity"] == sum(r["identity_sim"] is not None and r["identity_sim"] >= 0.9
                                            for r in generated)
    assert counts["passed_clip"] == sum(r["clip_t"] >= -0.02 for r in generated)
    assert counts["no_face"] == 6 + sum(r["reject_reason"] == "no_face_in_target" for r in rows)
    assert counts["failed"] == 6
    assert sum(info["reject_reasons"].values()) == 30 - counts["passed"]
    assert info["unreadable_sources"] == ["broken.jpg"]
    printed = capsys.readouterr().out
    assert f"passed both (training rows): {counts['passed']}" in printed
    # The trainers' reader (the other side of the format contract) gets exactly the passed rows.
    data = pytest.importorskip("instantportrait.training.data")
    _, pairs = data.read_dataset(out)
    assert [p.id for p in pairs] == [r["id"] for r in rows if r["passed"]]
    assert all(p.source_kps.shape == (5, 2) for p in pairs)
    assert f"identity (insightface:tiny_pack cosine >= 0.9): {counts['passed_identity']} of 18 passed" in printed


# --------------------------------------------------------------------------------------------- resume, shards
@pytest.fixture(scope="module")
def reference(sources, tmp_path_factory, tiny_ip2p, tiny_face_pack, tiny_clip_file) -> Path:
    """An uninterrupted single-process build with the tiny InstructPix2Pix (targets are noise: no face in them)."""
    out = tmp_path_factory.mktemp("reference") / "pairs"
    assert bd.main(tiny_args(sources, out, tiny_ip2p, tiny_face_pack, tiny_clip_file)) == 0
    return out


def test_reference_build(reference):
    rows = read_manifest(reference)
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    reasons = [r["reject_reason"] for r in rows]
    assert reasons.count("unreadable_source") == 4 and reasons.count("no_face_in_source") == 4
    assert reasons.count("no_face_in_target") == 12  # random tiny weights draw no face
    info = json.loads((reference / bd.DATASET_JSON).read_text())
    assert info["counts"]["no_face"] == 16
    assert info["generator"]["nfe"] == 2 * 3  # 2 steps x InstructPix2Pix's 3-way guidance batch


def assert_same_manifest(out: Path, reference: Path) -> None:
    """Byte-identical manifests; on a difference, show the first differing row of each."""
    got, want = (out / bd.MANIFEST).read_bytes(), (reference / bd.MANIFEST).read_bytes()
    if got != want:
        got_rows, want_rows = got.decode().splitlines(), want.decode().splitlines()
        first = next(((a, b) for a, b in zip(got_rows, want_rows) if a != b), ("", ""))
        pytest.fail(f"manifests differ ({len(got_rows)} vs {len(want_rows)} rows); first different rows:\n"
                    f"{first[0]}\n{first[1]}")


def _count_rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_then_resume_gives_the_same_manifest(reference, sources, tmp_path, tiny_ip2p, tiny_face_pack,
                                                     tiny_clip_file):
    out = tmp_path / "pairs"
    part = bd.part_path(out, 1, 0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "train.build_dataset",
                             *tiny_args(sources, out, tiny_ip2p, tiny_face_pack, tiny_clip_file)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _count_rows(part) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    done = _count_rows(part)
    assert 2 <= done < 20, "the build was not interrupted mid-run"
    assert not (out / bd.MANIFEST).exists()
    # A kill in the middle of a batch's write leaves whole rows and a torn last one: cut the last row in half, so
    # its batch (2 rows) is half done and must be redone without writing its first row twice.
    data = part.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    part.write_bytes(data[:last + (len(data) - last) // 2])

    assert bd.main(tiny_args(sources, out, tiny_ip2p, tiny_face_pack, tiny_clip_file)) == 0
    assert_same_manifest(out, reference)
    ids = [r["id"] for r in read_manifest(out)]
    assert len(ids) == len(set(ids)) == 20
    part_ids = [r["id"] for r in bd.read_part_rows(part)]
    assert sorted(part_ids) == sorted(ids)  # nothing written twice
    for row in read_manifest(out):  # the same pixels too
        for key in ("source", "target"):
            if row[key]:
                assert (out / row[key]).read_bytes() == (reference / row[key]).read_bytes()
    assert not list((out / "images").rglob("*.tmp"))
    # A rerun of a finished build generates nothing and leaves the manifest as it is.
    mtime = part.stat().st_mtime_ns
    assert bd.main(tiny_args(sources, out, tiny_ip2p, tiny_face_pack, tiny_clip_file)) == 0
    assert part.stat().st_mtime_ns == mtime
    assert_same_manifest(out, reference)
    # Resuming with different settings is refused before anything is loaded.
    assert bd.main(tiny_args(sources, out, tiny_ip2p, tiny_face_pack, tiny_clip_file, "--seed", "1")) == 1


def test_two_shards_then_merge_equal_one_process(reference, sources, tmp_path, tiny_ip2p, tiny_face_pack,
                                                  tiny_clip_file, capsys):
    out = tmp_path / "pairs"
    args = tiny_args(sources, out, tiny_ip2p, tiny_face_pack, tiny_clip_file)
    assert bd.main([*args, "--num-shards", "2", "--shard-index", "0"]) == 0
    assert not (out / bd.MANIFEST).exists()
    assert "--merge" in capsys.readouterr().out
    assert bd.main(["--out", str(out), "--merge"]) == 1  # shard 1 has not run
    assert "10 of 20 rows are not built yet" in capsys.readouterr().err
    assert bd.main([*args, "--num-shards", "2", "--shard-index", "1"]) == 0  # the last shard merges
    assert [r["id"] for r in bd.read_part_rows(bd.part_path(out, 2, 1))] == [r["id"] for r in read_manifest(out)][1::2]
    assert_same_manifest(out, reference)
    (out / bd.MANIFEST).unlink()
    (out / bd.DATASET_JSON).unlink()
    assert bd.main(["--out", str(out), "--merge"]) == 0
    assert_same_manifest(out, reference)
    assert json.loads((out / bd.DATASET_JSON).read_text())["counts"] == \
        json.loads((reference / bd.DATASET_JSON).read_text())["counts"]


# --------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_one_clear_error(sources, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    assert bd.main(["--sources", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "no images found in" in capsys.readouterr().err
    assert bd.main(["--sources", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    assert bd.main(["--sources", "someone/portraits", "--out", str(tmp_path / "o")]) == 1
    assert "pip install datasets" in capsys.readouterr().err
    assert bd.main(["--sources", str(sources), "--out", str(tmp_path / "o"), "--generator", "nope"]) == 1
    assert "unknown method 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bd.main(["--out", str(tmp_path / "o")])  # --sources is required for a build
    with pytest.raises(SystemExit):
        bd.main(["--sources", str(sources), "--out", str(tmp_path / "o"), "--det-size", "100"])
    assert not (tmp_path / "o" / bd.BUILD_JSON).exists()


def test_hub_dataset_without_filters(tmp_path, tiny_ip2p, monkeypatch):
    """A Hub id goes through `datasets` (faked here): images exported once, undecodable ones recorded."""
    import types

    class FakeDataset:
        column_names = ["image", "caption"]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 2:
                raise OSError("broken image bytes")
            return {"image": drawn_face(64, (40 + 60 * i, 90, 150)), "caption": "x"}

    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda name, split: calls.append((name, split)) or FakeDataset())
    monkeypatch.setitem(sys.modules, "datasets", fake)
    instructions = tmp_path / "i.jsonl"
    instructions.write_text(json.dumps({"instruction": "add a hat", "target_caption": "a person in a hat",
                                        "category": "accessories"}) + "\n")
    out = tmp_path / "pairs"
    argv = ["--sources", "someone/portraits", "--out", str(out), "--generator-model", str(tiny_ip2p), "--steps", "1",
            "--resolution", "32", "--instructions", str(instructions), "--no-face-filter", "--no-clip-filter",
            "--no-progress"]
    assert bd.main(argv) == 0
    assert calls == [("someone/portraits", "train")]
    rows = read_manifest(out)
    assert [r["passed"] for r in rows] == [True, True, False]
    assert rows[2]["reject_reason"] == "unreadable_source"
    assert all(r["identity_sim"] is None and r["clip_t"] is None and r["source_kps"] is None for r in rows)
    info = json.loads((out / bd.DATASET_JSON).read_text())
    assert info["thresholds"] == {"identity_sim": None, "clip_t": None}
    assert info["face_model"] is None and info["clip"] is None
    assert info["counts"] | {} == {"total": 3, "passed_identity": 2, "passed_clip": 2, "passed": 2, "no_face": 0,
                                   "failed": 1}
    assert bd.main(argv) == 0 and calls == [("someone/portraits", "train")]  # exported once


def test_editor_takes_one_seed_per_image(tiny_ip2p, portrait):
    """Per-row seeds in one batch (the shared Editor.edit accepts a list): each image as if generated alone."""
    from instantportrait.methods import EditSettings, get_editor

    editor = get_editor("instructpix2pix", model=str(tiny_ip2p), resolution=32)
    settings = EditSettings(num_inference_steps=1)
    images, texts = [portrait, portrait], ["add a hat", "add a hat"]
    batch = editor.edit(images, texts, seed=[11, 12], settings=settings)
    alone = [editor.edit(images[:1], texts[:1], seed=s, settings=settings)[0] for s in (11, 12)]
    # As if generated alone, up to one 8-bit level where a batched matmul rounds differently (seen on some CPUs).
    for b, a in zip(batch, alone):
        assert np.abs(np.asarray(b, np.int16) - np.asarray(a, np.int16)).max() <= 1
    assert np.abs(np.asarray(batch[0], np.int16) - np.asarray(batch[1], np.int16)).mean() > 2  # other seed, other image
    with pytest.raises(ValueError, match="2 seeds for 1 images"):
        editor.edit(images[:1], texts[:1], seed=[1, 2], settings=settings)


def test_the_identity_filter_defaults_to_dlib_not_the_evaluation_model():
    """The benchmark judges identity with buffalo_l: the filter defaults to dlib, with dlib's own cosine threshold."""
    from train.build_dataset.cli import build_parser, min_identity
    from train.build_dataset.plan import DLIB_MIN_IDENTITY, Locations

    args = build_parser().parse_args(["--sources", "x", "--out", "y"])
    assert args.face_pack is None and Locations().face_pack == "dlib" and min_identity(args) == DLIB_MIN_IDENTITY
    named = build_parser().parse_args(["--sources", "x", "--out", "y", "--face-pack", "buffalo_l"])
    assert min_identity(named) == 0.4

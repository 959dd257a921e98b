"""train.teacher_path: a teacher's own samples through the IPNet trainer's target path, next to the floor (the
unchanged source) and the ceiling (the rendered target through the VAE), on held-out demo-world people."""

from __future__ import annotations

import pytest

from instantportrait.config import DEMO_ROOT
from train import teacher_path


def test_parse_variant_reads_teacher_settings_and_refuses_others():
    assert teacher_path.parse_variant("inv:teacher_steps=4,inversion_prompt=empty,teacher_text_guidance=3.5") == (
        "inv", {"teacher_steps": 4, "inversion_prompt": "empty", "teacher_text_guidance": 3.5})
    with pytest.raises(ValueError, match="teacher_start"):
        teacher_path.parse_variant("x:learning_rate=1")


def test_the_shipped_teacher_is_measured_between_floor_and_ceiling():
    result = teacher_path.measure(str(DEMO_ROOT / "idenet"), teacher_path.CONFIG_DIR / "demo_ipnet.yaml",
                                  [("two-steps", {"teacher_steps": 2, "teacher_start": "ddim-inversion"})], n=6)
    rows = result["rows"]
    source, target = rows["source (no edit)"], rows["rendered target"]
    ceiling, teacher = rows["VAE-reconstructed target (ceiling)"], rows["teacher: two-steps"]
    assert source["identity"] == pytest.approx(1.0, abs=1e-4)  # the source against itself
    assert target["l1_to_target"]["all"] == 0.0
    # the VAE round trip of the target is far closer to it than the unedited source is
    assert ceiling["l1_to_target"]["all"] < 0.5 * source["l1_to_target"]["all"]
    assert teacher["settings"]["teacher_steps"] == 2 and 0.0 <= teacher["edit_present"] <= 1.0
    assert "| teacher: two-steps |" in teacher_path.format_table(result)
    # per category: the same categories as the L1 columns, and the pair-weighted mean is the overall share
    by_cat = teacher["edit_present_by_category"]
    assert set(by_cat) == set(teacher["l1_to_target"]) - {"all"}
    from instantportrait.config import DEMO_WORLD
    from instantportrait.demo import World
    counts = {}
    for s in World(**DEMO_WORLD, size=result["size"]).samples("test", 6):
        counts[s.category] = counts.get(s.category, 0) + 1
    assert sum(by_cat[c] * k for c, k in counts.items()) / 6 == pytest.approx(teacher["edit_present"])
    assert "| teacher: two-steps |" in teacher_path.format_categories(result)

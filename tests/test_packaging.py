"""`pip install .` gives the `instantportrait` package with its demo models and a console script, and nothing else:
no top-level `benchmark` / `train` packages to collide with other projects' (README "Set up and run")."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_its_demo_models_and_nothing_else(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("instantportrait-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"instantportrait"}, tops
    for shipped in ("instantportrait/demo/models/ipnet/unet/diffusion_pytorch_model.safetensors",
                    "instantportrait/demo/models/face_pack/w_demo.onnx",
                    "instantportrait/demo/models/clip/demo_clip.safetensors"):
        assert shipped in names, shipped
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "instantportrait = instantportrait.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_readme_main_command_runs_verbatim(tmp_path):
    """A newcomer's first run: the README's set-up block's second line, word for word, on the portrait that ships
    in examples/, exits 0, writes the edited image and names the model it used (the toy demo IPNet here)."""
    import os
    import re
    import shlex
    import shutil
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    block = re.search(r"## Set up and run.*?```bash\n(.*?)```", (root / "README.md").read_text(), re.S).group(1)
    command = block.splitlines()[1].split("#")[0].strip()
    assert command.startswith("python -m instantportrait edit examples/"), command
    shutil.copytree(root / "examples", tmp_path / "examples")
    argv = shlex.split(command)
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / argv[argv.index("-o") + 1]
    assert Image.open(out).size == Image.open(tmp_path / "examples" / "portrait.png").size
    assert "TOY demo model" in done.stderr and "demo/models/ipnet" in done.stderr

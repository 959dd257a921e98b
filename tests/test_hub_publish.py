"""Publishing trained checkpoints (model card, upload through a stand-in Hub API) and loading them back by revision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from instantportrait import hub
from instantportrait.config import resolve_model

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


class FakeHubApi:
    """Records what would be sent to the Hub; ``upload_folder`` snapshots the folder as it is at upload time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None, ignore_patterns=None):
        from fnmatch import fnmatch

        self.calls.append(("upload_folder", {"repo_id": repo_id, "revision": revision, "message": commit_message}))
        root = Path(folder_path)
        for p in root.rglob("*"):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not any(fnmatch(rel, pat) for pat in ignore_patterns or ()):
                self.uploaded[rel] = p.read_bytes()
        return type("CommitInfo", (), {"commit_url": f"https://hub.test/{repo_id}/commit/{COMMIT}"})()


@pytest.fixture()
def trained_ipnet(tiny_ipnet, tmp_path) -> Path:
    """An IPNet output folder as a trainer leaves it: the pipeline, its config, and trainer state."""
    folder = tmp_path / "run"
    shutil.copytree(tiny_ipnet, folder)
    config = {"learning_rate": 1e-5, "max_train_steps": 2000, "identity_weight": "annealing",
              "data": {"train_data_dir": "data/portraits", "num_pairs": 4096}, "hub_token": "hf_SECRET"}
    (folder / "training_config.yaml").write_text(yaml.safe_dump(config))
    (folder / "checkpoint-500").mkdir()
    (folder / "checkpoint-500" / "optimizer.bin").write_bytes(b"state")
    (folder / "random_states_0.pkl").write_bytes(b"rng")
    return folder


@pytest.fixture()
def metrics_file(tmp_path) -> Path:
    rows = [{"method": "ipnet", "clip_t": 0.281234, "id_sim": 0.7012, "nfe": 1},
            {"method": "instructpix2pix", "clip_t": 0.27, "id_sim": 0.55, "nfe": 300}]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(rows))
    return path


def test_card_renders_training_config_data_metrics_and_redacts_secrets(trained_ipnet, metrics_file):
    info = hub.checkpoint_card_info(trained_ipnet, "me/ipnet", {"base_model": "timbrooks/instruct-pix2pix"},
                                    metrics_file)
    card = hub.model_card(info)
    assert "learning_rate: 1.0e-05" in card and "max_train_steps: 2000" in card
    assert "hub_token: <redacted>" in card and "hf_SECRET" not in card
    assert "`data.train_data_dir` = `data/portraits`" in card  # the Data section comes from the config
    assert "| ipnet/clip_t | 0.2812 |" in card and "| instructpix2pix/nfe | 300 |" in card
    assert "base_model: timbrooks/instruct-pix2pix" in card
    assert "InstantPortraitPipeline.from_pretrained('me/ipnet')" in card
    assert "non-commercial" in card and "# tiny IPNet (test)" in card  # the name saved with the pipeline wins


def test_load_metrics_shapes(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"metrics": {"clip_t": 0.3, "per_category": {"hair": 0.4}, "ok": True}}))
    assert hub.load_metrics(path) == {"clip_t": 0.3, "per_category/hair": 0.4}
    path.write_text(json.dumps(["no rows"]))
    with pytest.raises(ValueError, match="no numeric metrics"):
        hub.load_metrics(path)
    with pytest.raises(FileNotFoundError):
        hub.load_metrics(tmp_path / "absent.json")


def test_publish_uploads_folder_with_card_and_without_trainer_state(trained_ipnet, metrics_file):
    api = FakeHubApi()
    url = hub.publish_checkpoint(trained_ipnet, "me/ipnet", revision="v1", private=True, metrics_file=metrics_file,
                                 card_info={"data": "synthetic portraits x 24 instructions"}, api=api)
    assert url.endswith(COMMIT)
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1]["private"] is True and api.calls[1][1]["branch"] == "v1"
    assert api.calls[2][1]["revision"] == "v1" and "IPNet" in api.calls[2][1]["message"]
    card = api.uploaded["README.md"].decode()
    assert "synthetic portraits x 24 instructions" in card and "| ipnet/id_sim | 0.7012 |" in card
    assert "# tiny IPNet (test)" in card  # the card save_pretrained wrote is kept ...
    assert "hub_token: <redacted>" in card and "max_train_steps: 2000" in card  # ... and gains the redacted config
    assert "unet/diffusion_pytorch_model.safetensors" in api.uploaded and "model_index.json" in api.uploaded
    assert not any(k.startswith("checkpoint-") or k.endswith(".pkl") for k in api.uploaded)
    assert "training_config.yaml" not in api.uploaded  # it holds a token: only the redacted copy (in the card) goes
    assert b"hf_SECRET" not in b"".join(api.uploaded.values())


def test_publish_idenet_folder_gets_teacher_card(tiny_ip2p, tmp_path):
    folder = shutil.copytree(tiny_ip2p, tmp_path / "idenet")
    (folder / "training_config.json").write_text(json.dumps({"identity_loss": "annealing", "steps": 10}))
    api = FakeHubApi()
    hub.publish_checkpoint(folder, "me/idenet", api=api)
    card = api.uploaded["README.md"].decode()
    assert "StableDiffusionInstructPix2PixPipeline.from_pretrained('me/idenet'" in card
    assert "identity_loss: annealing" in card and "non-commercial" in card
    assert "training_config.json" in api.uploaded  # nothing secret in it: published alongside
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]  # no branch for the default revision


TRAINER_CARD = """---
license: openrail
tags:
- instantportrait
---

# IDE-Net (my run)

Trainer's own words: 300 steps on my pairs, identity weighting `annealing`. Load with get_editor("idenet",
model="PATH_OR_REPO").
"""


def test_publish_keeps_the_trainers_card_and_appends_metrics_once(tiny_ip2p, tmp_path, metrics_file):
    """Publishing adds what it knows (benchmark metrics, notes) below the trainer's card; it never replaces it, and
    publishing again replaces its own addition instead of stacking a second one."""
    folder = shutil.copytree(tiny_ip2p, tmp_path / "idenet")
    (folder / "README.md").write_text(TRAINER_CARD)
    (folder / "training_config.yaml").write_text(yaml.safe_dump({"steps": 300, "hub_token": "hf_SECRET_123"}))
    for _ in range(2):
        api = FakeHubApi()
        hub.publish_checkpoint(folder, "me/idenet", metrics_file=metrics_file, card_info={"notes": "v1 release"},
                               api=api)
        card = api.uploaded["README.md"].decode()
        assert card.startswith(TRAINER_CARD.replace("PATH_OR_REPO", "me/idenet").rstrip())  # the trainer's, verbatim
        assert card.count(hub.PUBLISHED_MARK) == 1 and card.count("## Metrics") == 1
        assert "| ipnet/clip_t | 0.2812 |" in card and "v1 release" in card
        assert "hub_token: <redacted>" in card and "hf_SECRET_123" not in card
        assert "StableDiffusionInstructPix2PixPipeline" not in card  # no generated card replaced it


def test_publish_refuses_bad_folders(trained_ipnet, tmp_path):
    with pytest.raises(ValueError, match="no model_index.json"):
        hub.publish_checkpoint(tmp_path, "me/x", api=FakeHubApi())
    with pytest.raises(ValueError, match="user/name"):
        hub.publish_checkpoint(trained_ipnet, "no-namespace", api=FakeHubApi())
    (trained_ipnet / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickled weights.*unet/diffusion_pytorch_model.bin"):
        hub.publish_checkpoint(trained_ipnet, "me/x", api=FakeHubApi())
    (trained_ipnet / "unet" / "diffusion_pytorch_model.bin").unlink()
    weights = trained_ipnet / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ValueError, match="vae/diffusion_pytorch_model.safetensors.*truncated"):
        hub.publish_checkpoint(trained_ipnet, "me/x", api=FakeHubApi())


def test_from_pretrained_and_locate_honour_revision(tiny_ipnet, tmp_path):
    """A published checkpoint pinned by commit loads from the Hub cache offline; without the revision it does not."""
    from test_models_cli import put_in_hub_cache

    from instantportrait import InstantPortraitPipeline

    cache = tmp_path / "hub"
    snapshot = put_in_hub_cache(cache, "me/ipnet", tiny_ipnet, COMMIT, ref=None)  # no refs/main: only that commit
    pipe = InstantPortraitPipeline.from_pretrained("me/ipnet", revision=COMMIT, cache_dir=cache)
    assert pipe.config.timestep == json.loads((tiny_ipnet / "model_index.json").read_text())["timestep"]
    with pytest.raises(OSError, match="not fully cached"):  # refs/main is absent: the revision was what found it
        InstantPortraitPipeline.from_pretrained("me/ipnet", cache_dir=cache)
    spec = resolve_model("ipnet", f"me/ipnet@{COMMIT}")  # what editors get from model="repo@rev"
    assert hub.locate(spec, cache_dir=cache) == snapshot

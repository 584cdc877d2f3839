"""Preflight (`affectflow check`, the start of `affectflow run`): models looked up in a fake
offline hub cache, dataset layouts, and the clean exit-2 report when something is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import constants

from affectflow.models import weights_cache
from affectflow.models.weights_cache import locate_weights
from affectflow.pipelines.cli import main
from affectflow.pipelines.config import load_config, stage_params
from affectflow.pipelines.preflight import model_needs, preflight
from affectflow.stages.ingest.layout import describe_layout
from affectflow.stages.ingest.stage import IngestParams
from tests.conftest import write_image, write_tumemo
from tests.stages.helpers import demo_config

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
PAPER_CONFIGS = sorted((REPO / "configs").glob("pacl_tumemo_*.yaml"))
COMMIT = "0" * 40


def cache_repo(hub: Path, repo_id: str, files: list[str]) -> None:
    """A repo in the layout huggingface_hub's cache uses: refs/main -> snapshots/<commit>/<file>."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    for name in files:
        path = folder / "snapshots" / COMMIT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache in a temp folder, with the hub marked offline (as HF_HUB_OFFLINE=1 does)."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


# ---------------------------------------------------------------- spec -> cache
def test_hub_ids_are_found_only_with_their_config_and_weights(offline_hub: Path) -> None:
    cache_repo(offline_hub, "org/present", ["config.json", "model.safetensors"])
    cache_repo(offline_hub, "org/config-only", ["config.json"])
    assert locate_weights("transformers", "org/present").found
    missing = locate_weights("transformers", "org/missing")
    assert not missing.found and "org/missing" in missing.where and str(offline_hub) in missing.where
    assert "hf download org/missing" in missing.fix and "HF_HOME" in missing.fix
    assert "save_pretrained" in missing.fix
    partial = locate_weights("transformers", "org/config-only")
    assert not partial.found and "model.safetensors or" in partial.where


def test_open_clip_and_timm_tags_resolve_to_the_hub_files_their_libraries_load(offline_hub: Path) -> None:
    assert not locate_weights("clip", "ViT-B-32:openai").found
    assert not locate_weights("visual", "timm:resnet50").found
    cache_repo(offline_hub, "timm/vit_base_patch32_clip_224.openai", ["open_clip_model.safetensors"])
    cache_repo(offline_hub, "timm/resnet50.a1_in1k", ["model.safetensors"])
    assert locate_weights("clip", "ViT-B-32:openai").found
    assert locate_weights("visual", "open_clip:ViT-B-32:openai").found
    assert locate_weights("visual", "timm:resnet50").found
    assert locate_weights("visual", "timm:resnet50.a1_in1k").found


def test_random_init_packaged_and_local_specs_need_no_cache(offline_hub: Path, tmp_path: Path) -> None:
    assert locate_weights("visual", "timm:resnet50", pretrained=False) is None
    assert locate_weights("clip", "ViT-B-32") is None
    assert locate_weights("transformers", "packaged:all-MiniLM-L6-v2").found
    checkpoint = tmp_path / "r50.safetensors"
    checkpoint.write_bytes(b"weights")
    assert locate_weights("visual", f"timm:resnet50:{checkpoint}").where == f"local file {checkpoint}"


def test_model_needs_come_from_the_params_types(demo_dir: Path, tmp_path: Path) -> None:
    config = load_config(None, raw=demo_config(demo_dir, tmp_path, cluster={"visual_encoder": "timm:resnet50"}))
    keys = {need.key: need.pretrained for name in config.run.stages
            for need in model_needs(name, stage_params(config, name))}
    assert {"caption.model", "factual.clip", "emotional.clip", "emotional.text_encoder",
            "teacher.text_encoder", "cluster.visual_encoder"} <= set(keys)
    assert keys["cluster.visual_encoder"] is True


def test_unknown_timm_names_are_caught_at_preflight_with_the_closest_names(
        demo_dir: Path, tmp_path: Path) -> None:
    """Config validation does not ask timm (it would import torch); the preflight does, for
    PACL's visual spec and CTERNet's bare backbone name alike."""
    raw = demo_config(demo_dir, tmp_path, cluster={"visual_encoder": "timm:resnet5", "pretrained": False})
    raw["cternet_train"] = {"backbone": "res2net10d", "pretrained": False}
    config = load_config(None, raw=raw)
    problems = preflight(config, ["cluster", "cternet_train"]).problems
    assert len(problems) == 2
    assert problems[0].startswith("cluster.visual_encoder = 'timm:resnet5': timm has no model 'resnet5'")
    assert "did you mean 'resnet50'" in problems[0] or "'resnet50'" in problems[0]
    assert problems[1].startswith("cternet_train.backbone = 'res2net10d': timm has no model")
    assert "'res2net101d'" in problems[1]
    raw["cternet_train"]["backbone"] = "test_resnet"
    assert preflight(load_config(None, raw=raw), ["cternet_train"]).problems == []


def test_cternet_backbone_weights_are_looked_for_only_when_they_are_loaded(
        demo_dir: Path, tmp_path: Path, offline_hub: Path) -> None:
    raw = demo_config(demo_dir, tmp_path)
    raw["cternet_train"] = {"backbone": "resnet18", "pretrained": True}
    problems = preflight(load_config(None, raw=raw), ["cternet_train"]).problems
    assert len(problems) == 1 and problems[0].startswith("cternet_train.backbone = 'resnet18'")
    assert "backbone_checkpoint" in problems[0]
    checkpoint = tmp_path / "backbone.pt"
    checkpoint.write_bytes(b"state dict")
    raw["cternet_train"]["backbone_checkpoint"] = str(checkpoint)
    assert preflight(load_config(None, raw=raw), ["cternet_train"]).problems == []
    raw["cternet_train"] = {"backbone": "resnet18", "pretrained": False}
    report = preflight(load_config(None, raw=raw), ["cternet_train"])
    assert report.problems == [] and "random init" in report.found[0]


def test_online_a_missing_cache_entry_is_fine_unless_the_hub_lacks_the_repo(
        demo_dir: Path, tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights_cache.urllib.request, "urlopen", lambda *args, **kwargs: None)
    config = load_config(None, raw=demo_config(demo_dir, tmp_path, teacher={"text_encoder": "org/new"}))
    monkeypatch.setattr("affectflow.pipelines.preflight.hub_repo_exists", lambda repo: True)
    report = preflight(config, ["teacher"])
    assert report.problems == [] and report.offline is None
    assert any("downloaded on first use" in line for line in report.found)
    monkeypatch.setattr("affectflow.pipelines.preflight.hub_repo_exists", lambda repo: False)
    assert "has no repo 'org/new'" in preflight(config, ["teacher"]).problems[0]


def test_no_network_counts_as_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise weights_cache.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights_cache.urllib.request, "urlopen", unreachable)
    assert "no network" in weights_cache.hub_offline_reason()


# ---------------------------------------------------------------- dataset layouts
def test_layout_problems_name_the_key_and_the_fix(tmp_path: Path) -> None:
    write_tumemo(tmp_path / "tumemo", {"1": ("Happy", "a day"), "2": ("Sad", "rain")})
    found, problems = describe_layout(IngestParams(source="tumemo", path=tmp_path / "tumemo"), "ingest")
    assert problems == [] and found.startswith("TumEmo layout")
    (tmp_path / "tumemo" / "1.jpg").unlink()
    _, problems = describe_layout(IngestParams(source="tumemo", path=tmp_path / "tumemo"), "ingest")
    assert problems[0].startswith("ingest.image_dir") and "(1)" in problems[0]
    (tmp_path / "empty").mkdir()
    _, problems = describe_layout(IngestParams(source="tumemo", path=tmp_path / "empty"), "ingest")
    assert "no all_data_id_and_label.txt" in problems[0] and "ingest.path" in problems[0]
    _, problems = describe_layout(IngestParams(source="image_folder", path=tmp_path / "empty"), "probe_ingest")
    assert problems[0].startswith("probe_ingest.path") and "no class sub-folder" in problems[0]
    write_image(tmp_path / "fi" / "awe" / "a.jpg")
    found, problems = describe_layout(IngestParams(source="image_folder", path=tmp_path / "fi"), "probe_ingest")
    assert problems == [] and "1 classes (awe)" in found
    pd.DataFrame({"id": ["1"], "picture": ["1.jpg"], "text": ["hi"]}).to_csv(tmp_path / "posts.csv", index=False)
    _, problems = describe_layout(IngestParams(source="manifest", path=tmp_path / "posts.csv"), "ingest")
    assert problems == ["ingest.columns.image = 'image' is not a column of "
                        f"{tmp_path / 'posts.csv'}; set it to one of ['id', 'picture', 'text']"]


def test_split_folder_layout_is_described_by_its_splits(tmp_path: Path) -> None:
    """The official FI layout: classes are found under train/, not at the top."""
    for split in ("train", "val"):
        write_image(tmp_path / "FI" / split / "awe" / "a.jpg")
    params = IngestParams(source="image_folder", path=tmp_path / "FI", layout="split_folders")
    found, problems = describe_layout(params, "ingest")
    assert problems == [] and found == ("split folders train/, val/ (test carved from train/); "
                                        "1 classes in train/ (awe)")
    (tmp_path / "FI" / "val" / "awe" / "a.jpg").unlink()
    _, problems = describe_layout(params, "ingest")
    assert problems == [f"ingest.path = {tmp_path / 'FI'}: val/ has no class sub-folder with images; "
                        "layout split_folders wants <path>/val/<class>/<image>"]


# ---------------------------------------------------------------- the commands
def test_demo_config_passes_check(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  offline_hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/demo.yaml itself, from a folder where artifacts/demo-data is the test's demo data."""
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "demo-data").symlink_to(demo_dir)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--config", str(DEMO_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "teacher.text_encoder = packaged:all-MiniLM-L6-v2: packaged model" in out
    assert "ingest.path = artifacts/demo-data/tumemo: TumEmo layout" in out
    assert "everything this run needs is here" in out
    assert not (tmp_path / "artifacts" / "runs").exists()


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda path: path.stem)
def test_paper_configs_fail_only_on_the_weights_missing_offline(config: Path, tmp_path: Path, offline_hub: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    tumemo = write_tumemo(tmp_path / "TumEmo", {"1": ("Happy", "a sunny day"), "2": ("Sad", "rain")})
    assert main(["check", "--config", str(config), "--set", f"ingest.path={tumemo}"]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {config}: ") and "(HF_HUB_OFFLINE is set)" in lines[0]
    problems = [line.strip() for line in lines[1:] if not line.startswith("hint:")]
    keys = [line.split(" = ", 1)[0] for line in problems]
    raw = yaml.safe_load(config.read_text())
    expected = {"factual.clip", "emotional.clip", "emotional.text_encoder", "teacher.text_encoder",
                "cluster.visual_encoder", "pacl.visual_encoder"}
    assert set(keys) == expected and len(keys) == len(expected)
    for line in problems:
        assert "is not in the Hugging Face cache" in line and "hf download" in line and "HF_HOME" in line
    assert f"pacl.visual_encoder = {raw['pacl']['visual_encoder']!r}" in err
    assert "Traceback" not in err


def test_offline_run_with_missing_weights_exits_2_before_any_run_folder(demo_dir: Path, tmp_path: Path) -> None:
    """Through the shell as a user would: HF_HOME at a fake cache holding one of two hub models."""
    hf_home = tmp_path / "hf"
    cache_repo(hf_home / "hub", "org/present", ["config.json", "model.safetensors"])
    artifacts = tmp_path / "artifacts"
    raw = demo_config(demo_dir, artifacts, teacher={"text_encoder": "org/present"},
                      emotional={"text_encoder": "org/missing"})
    raw["run"]["stages"] = ["ingest", "factual", "emotional", "teacher"]
    config = tmp_path / "offline.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    for command in (["check", "--config", str(config)], ["run", "pretrain", "--config", str(config)]):
        done = subprocess.run([sys.executable, "-m", "affectflow.pipelines.cli", *command], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stderr
        problems = [line for line in done.stderr.splitlines() if line.startswith("  ")]
        assert len(problems) == 1 and "emotional.text_encoder = 'org/missing'" in problems[0]
        for fix in ("hf download org/missing", "HF_HOME", "save_pretrained", str(hf_home / "hub")):
            assert fix in problems[0]
        assert "Traceback" not in done.stderr and "teacher.text_encoder" not in done.stderr
        assert not (artifacts / "runs").exists()


def test_layout_of_an_annotated_manifest_checks_its_annotation_columns(tmp_path: Path) -> None:
    """A labelled manifest needs no text column when no text is required, but every column its
    label set and targets name (the listing's own column list, `required_columns`)."""
    pd.DataFrame({"id": ["1"], "image": ["1.jpg"], "cats": ["Fear"], "valence": ["3"]}).to_csv(
        tmp_path / "emotic.csv", index=False)
    params = {"source": "manifest", "path": tmp_path / "emotic.csv", "require_text": False}
    _, problems = describe_layout(IngestParams(**params, columns={"label_set": "cats"},
                                               targets=["valence"]), "probe_ingest")
    assert problems == []
    _, problems = describe_layout(IngestParams(**params, columns={"label_set": "categories"},
                                               targets=["valence", "arousal"]), "probe_ingest")
    columns = "['id', 'image', 'cats', 'valence']"
    assert problems == [
        f"probe_ingest.columns.label_set = 'categories' is not a column of {tmp_path / 'emotic.csv'}; "
        f"set it to one of {columns}",
        f"probe_ingest.targets = 'arousal' is not a column of {tmp_path / 'emotic.csv'}; "
        f"set it to one of {columns}"]

"""Config validation fails before any work, naming the key and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from affectflow.core.errors import UserError
from affectflow.pipelines.config import apply_overrides, load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_demo_config_is_valid_once_the_demo_data_and_models_exist(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "demo-data").symlink_to(demo_dir)
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.ingest.source == "tumemo"
    assert config.run.stages[0] == "ingest"
    monkeypatch.chdir(REPO.parent)
    with pytest.raises(UserError, match="model path does not exist"):
        load_config(REPO / "configs" / "demo.yaml")


@pytest.mark.parametrize(("text", "overrides", "message", "hint"), [
    ("ingest: {source: tumemo, path: ., colour: red}", [], "unknown key 'ingest.colour'",
     "affectflow config show ingest"),
    ("ingest: {source: tumemo, path: ., shard_size: many}", [], "'ingest.shard_size'", "--set ingest.shard_size"),
    ("ingest: {source: tumemo, path: /definitely/missing}", [], "path does not exist", "ingest.path"),
    ("ingest: {path: .}", [], "missing key 'ingest.source'", "add 'source"),
    ("run: {stages: [ingest]}", [], "have no section", "ingest:"),
    ("run: {stages: [nope]}\ningest: {source: tumemo, path: .}", [], "unknown stage 'nope'", "run.stages"),
    ("ingest: {source: tumemo, path: .}", ["run.workers=0"], "'run.workers'", "run.workers"),
    ("colours: 3", [], "unknown section 'colours'", "sections are 'run'"),
    ("- a list", [], "must be a mapping", ""),
    ("ingest: [unclosed", [], "not valid YAML", ""),
])
def test_config_errors_name_the_key(tmp_path: Path, text: str, overrides: list[str],
                                    message: str, hint: str) -> None:
    with pytest.raises(UserError) as caught:
        load_config(write(tmp_path, text), overrides)
    assert message in caught.value.message
    assert hint in caught.value.hint or hint in caught.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_overrides_parse_yaml_values_and_nest() -> None:
    assert parse_override("ingest.shard_size=64") == (["ingest", "shard_size"], 64)
    assert parse_override("a.b.c=[1, 2]") == (["a", "b", "c"], [1, 2])
    assert apply_overrides({"a": {"x": 1}}, ["a.y=true", "b.z=hi"]) == \
        {"a": {"x": 1, "y": True}, "b": {"z": "hi"}}
    for bad in ("noequals", "top=1"):
        with pytest.raises(UserError):
            parse_override(bad)


def test_stage_order_must_respect_inputs(tmp_path: Path) -> None:
    from affectflow.stages.registry import STAGES
    downstream = [name for name, cls in STAGES.items() if cls.inputs]
    if not downstream:
        pytest.skip("no stage with inputs registered yet")
    text = f"run: {{stages: [{downstream[0]}, ingest]}}\ningest: {{source: tumemo, path: .}}"
    with pytest.raises(UserError, match="listed before it"):
        load_config(write(tmp_path, text))


DOWNSTREAM_CONFIGS = ["probe_fi", "probe_emotion6", "probe_unbiasedemo", "probe_webemo",
                      "probe_emotic", "probe_iaps"]


def _finished_pacl(folder: Path, visual_encoder: str = "timm:resnet50") -> Path:
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text(json.dumps(
        {"stage": "pacl", "fingerprint": "x", "digest": "y", "params": {"visual_encoder": visual_encoder}}))
    return folder


@pytest.mark.parametrize("name", DOWNSTREAM_CONFIGS)
def test_downstream_configs_fail_only_on_their_missing_paths(name: str, tmp_path: Path) -> None:
    path = REPO / "configs" / f"{name}.yaml"
    with pytest.raises(UserError) as failure:
        load_config(path)
    message = failure.value.message
    assert re.findall(r"'([\w.]+)': ", message) == ["probe_ingest.path", "probe.pacl_from"]
    assert message.count("Value error, path does not exist") == 2
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").touch()
    layout = data if "source: image_folder" in path.read_text() else data / "manifest.csv"
    config = load_config(path, [f"probe_ingest.path={layout}",
                                f"probe.pacl_from={_finished_pacl(tmp_path / 'pacl')}"])
    assert config.run.stages == ["probe_ingest", "probe"]
    assert set(config.probe.evaluations) >= {"linear", "finetune"}


def test_demo_downstream_configs_are_valid_after_the_demo_run(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from affectflow.demo.scenes import demo_hierarchy
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "demo-data").symlink_to(demo_dir)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="path does not exist: artifacts/runs/demo/pacl"):
        load_config(REPO / "configs" / "demo_emotic.yaml")
    _finished_pacl(tmp_path / "artifacts" / "runs" / "demo" / "pacl", "timm:test_resnet")
    emotic = load_config(REPO / "configs" / "demo_emotic.yaml")
    assert emotic.probe.tasks == ["multi_label", "regression"]
    webemo = load_config(REPO / "configs" / "demo_webemo.yaml")
    assert [level.model_dump(exclude_defaults=True) for level in webemo.probe_ingest.hierarchy] \
        == demo_hierarchy()


def test_a_probe_of_another_runs_pacl_needs_no_pacl_stage_but_a_task_needs_its_annotation(
        tmp_path: Path) -> None:
    pacl = _finished_pacl(tmp_path / "pacl")
    text = (f"run: {{stages: [probe_ingest, probe]}}\n"
            f"probe_ingest: {{source: image_folder, path: {tmp_path}}}\n"
            f"probe: {{pacl_from: {pacl}, tasks: [multi_label]}}\n")
    with pytest.raises(UserError, match=r"needs probe_ingest\.columns\.label_set"):
        load_config(write(tmp_path, text))
    load_config(write(tmp_path, text.replace("multi_label", "single_label")))
    with pytest.raises(UserError, match="stage 'probe' needs \\['pacl'\\] listed before it"):
        load_config(write(tmp_path, text.replace(f"pacl_from: {pacl}, ", "")))

"""Experiment configuration: YAML + `--set` overrides, validated before any work starts.

The config has a `run` section (run-wide settings) and one section per stage, validated by that
stage's own params model, so a stage added to the registry is configurable with no change here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from affectflow.core.display import printable
from affectflow.core.errors import UserError, did_you_mean
from affectflow.pipelines.task_runners import check_runner_installed
from affectflow.stages.registry import PRETRAIN_CHAIN, STAGES

MAX_WORKERS_PER_CPU = 4
"""`run.workers` bound: more decode processes than this per CPU only thrash."""


class RunSettings(BaseModel):
    """Run-wide settings that do not change what a stage computes (so not in fingerprints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact_root: Path = Field(Path("artifacts"), description="where runs/<run_id>/ are written")
    workers: int = Field(2, ge=1, description="parallel decode / shard workers (at most "
                                              f"{MAX_WORKERS_PER_CPU} per CPU)")
    fingerprint: Literal["stat", "content"] = Field(
        "stat", description="external data (datasets, local model files) fingerprinted by "
                            "size + mtime, or by content (a copied dataset need not recompute)")
    pixel_cache_gb: float = Field(50.0, ge=0, description="bound of the decode-once pixel cache "
                                  "under <artifact_root>/cache/pixels; 0 turns it off")
    gpu_jpeg_decode: bool = Field(False, description="decode JPEGs that fill the pixel cache with "
                                  "nvJPEG when the stage runs on a GPU")
    torch_compile: bool = Field(False, description="torch.compile the training steps of pacl and "
                                "cternet_train (compilation costs minutes up front)")
    stages: list[str] = Field(default_factory=lambda: list(PRETRAIN_CHAIN),
                              description="stages of the pretrain flow, in order")
    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads", description="Prefect task runner for the stage tasks")
    dask_address: str | None = Field(None, description="Dask scheduler address; default: LocalCluster")
    ray_address: str | None = Field(None, description="Ray address (ray://...); default: local Ray")

    @field_validator("workers")
    @classmethod
    def _bounded_workers(cls, value: int) -> int:
        limit = MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
        if value > limit:
            raise ValueError(f"{value} workers on a machine with {os.cpu_count()} CPUs: each is "
                             f"a process; use at most {limit}")
        return value

    @field_validator("task_runner")
    @classmethod
    def _runner_installed(cls, value: str) -> str:
        check_runner_installed(value)
        return value

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage '{unknown[0]}'{did_you_mean(unknown[0], STAGES)} "
                             f"(known: {', '.join(STAGES)})")
        return value


def _config_model() -> type[BaseModel]:
    fields: dict[str, Any] = {"run": (RunSettings, Field(default_factory=RunSettings))}
    for name, stage in STAGES.items():
        fields[name] = (stage.Params | None, None)
    return create_model("AffectflowConfig", __config__=ConfigDict(extra="forbid"), **fields)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], value parsed as YAML, so 3 -> int)."""
    if "=" not in item:
        raise UserError(f"bad override {item!r}", hint="write --set section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise UserError(f"bad override key {key!r}", hint="name the section too, e.g. ingest.shard_size=64")
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"cannot set {'.'.join(parts)}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


BOUNDS = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le"),
          "greater_than": (">", "gt"), "less_than": ("<", "lt")}
"""pydantic's range error types -> the comparison and the name of the bound in the error's ctx."""


def section_fields(section: str) -> dict[str, Any]:
    """The pydantic fields of a config section (`run` or a stage name); {} for an unknown one."""
    model = RunSettings if section == "run" else getattr(STAGES.get(section), "Params", None)
    return dict(model.model_fields) if model is not None else {}


def _unknown_key(loc: tuple[Any, ...], source: str) -> tuple[str, str]:
    key = ".".join(map(str, loc))
    if len(loc) == 1:
        known = ["run", *STAGES]
        return (f"unknown section '{key}'{did_you_mean(key, known)}",
                f"sections are 'run' and the stage names ({', '.join(STAGES)})")
    section = ".".join(map(str, loc[:-1]))
    known = section_fields(str(loc[0])) if len(loc) == 2 else {}
    return (f"unknown key '{key}'{did_you_mean(str(loc[-1]), known)}",
            f"fix it in {source}; the keys of '{section}': affectflow config show {section} "
            f"(or configs/README.md)")


def _range_error(key: str, item: dict[str, Any], source: str) -> tuple[str, str]:
    comparison, bound_name = BOUNDS[item["type"]]
    bound = item.get("ctx", {}).get(bound_name)
    return (f"'{key}' must be {comparison} {bound}, got {item.get('input')!r}",
            f"set '{key}' to a value {comparison} {bound} in {source} or with --set {key}=...")


def _format_errors(error: ValidationError, source: str) -> UserError:
    lines = []
    hint = ""
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc)
        kind = item["type"]
        if kind == "extra_forbidden":
            line, hint = _unknown_key(loc, source)
        elif kind == "missing":
            line = f"missing key '{key}'"
            hint = f"add '{loc[-1]}: <value>' under '{'.'.join(map(str, loc[:-1]))}' in {source}"
        elif kind in BOUNDS:
            line, hint = _range_error(key, item, source)
        else:
            line = f"'{key}': {item['msg']} (got {item.get('input')!r})"
            hint = f"fix '{key}' in {source}" + (f" or with --set {key}=..." if len(loc) > 1 else "")
        lines.append(line)
    return UserError(f"invalid config {source}: " + "; ".join(lines), hint=hint)


def load_config(path: Path | None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None, source: str | None = None) -> BaseModel:
    """Read, override and validate; every problem is reported before any stage runs. `source`
    names a config that is not a file (a run's saved config) in error messages."""
    source = source or str(path)
    if raw is None:
        if path is None or not path.is_file():
            raise UserError(f"config file not found: {path}", hint="pass --config configs/demo.yaml")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {source} must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        config = _config_model().model_validate(raw)
    except ValidationError as error:
        raise _format_errors(error, source) from None
    missing = [name for name in config.run.stages if getattr(config, name) is None
               and _requires_section(name)]
    if missing:
        raise UserError(f"invalid config {source}: stages {missing} have no section",
                        hint=f"add a '{missing[0]}:' section (see configs/demo.yaml)")
    check_stage_order(config, source)
    check_across_stages(config, source)
    return config


def check_stage_order(config: BaseModel, source: str) -> None:
    """Every stage is listed after the inputs its configuration reads (`input_names`: the probe
    of another run's PACL model reads no pacl stage of its own run; `emotional` reads captions
    only when it describes images by them)."""
    stages = config.run.stages
    for index, name in enumerate(stages):
        needed = STAGES[name]().input_names(stage_params(config, name))
        missing = [dep for dep in needed if dep not in stages[:index]]
        if missing:
            raise UserError(f"invalid config {source}: 'run.stages': stage {name!r} needs "
                            f"{missing} listed before it",
                            hint=f"list {missing} before {name!r} in run.stages")


def check_across_stages(config: BaseModel, source: str) -> None:
    """Constraints between the sections of the stages a run lists (e.g. `pacl.k` must be one of
    `cluster.ks`), checked before any work starts."""
    sections = {name: stage_params(config, name) for name in config.run.stages}
    for name, params in sections.items():
        try:
            STAGES[name]().check_config(params, sections)
        except ValueError as error:
            raise UserError(f"invalid config {source}: {error}",
                            hint=f"fix the '{name}' section of {source}, or use --set") from None


def _requires_section(stage_name: str) -> bool:
    try:
        STAGES[stage_name].Params()
    except ValidationError:
        return True
    return False


def stage_params(config: BaseModel, stage_name: str) -> Any:
    """The stage's validated params (its defaults when the config has no section for it)."""
    section = getattr(config, stage_name)
    return section if section is not None else STAGES[stage_name].Params()


def config_snapshot(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True)


REFERENCE_FILE = Path(__file__).resolve().parents[1] / "configs" / "README.md"
REFERENCE_START = ("<!-- key reference: generated from the params models by "
                   "`affectflow config reference --write`; do not edit by hand -->")
REFERENCE_END = "<!-- end of key reference -->"


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation)
    for noise in ("typing.", "pathlib.", "NoneType", "annotated_types.", "affectflow.stages.param_types."):
        text = text.replace(noise, "None" if noise == "NoneType" else "")
    return text


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    return "none" if default is None else printable(default if not isinstance(default, Path) else str(default), 60)


def section_reference(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key of a config section, from its model."""
    fields = section_fields(section)
    if not fields:
        raise UserError(f"unknown config section {section!r}{did_you_mean(section, ['run', *STAGES])}",
                        hint=f"sections: run, {', '.join(STAGES)}")
    return [(name, _type_name(info.annotation), _default_text(info), info.description or "")
            for name, info in fields.items()]


def section_text(section: str) -> str:
    """`affectflow config show SECTION`: one key per line with type, default and description."""
    rows = section_reference(section)
    width = max(len(key) for key, *_ in rows)
    lines = [f"{section}:"]
    for key, kind, default, description in rows:
        lines.append(f"  {key:<{width}}  {kind}  (default: {default})")
        if description:
            lines.append(f"  {'':<{width}}  {description}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The key reference of every config section, as configs/README.md holds it."""
    lines = [REFERENCE_START, "", "## Key reference", "",
             "Every key of every section, with its type and default (from the stages' params "
             "models; `affectflow config show SECTION` prints the same).", ""]
    for section in ["run", *STAGES]:
        lines += [f"### `{section}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(description)} |"
                  for key, kind, default, description in section_reference(section)]
        lines.append("")
    lines.append(REFERENCE_END)
    return "\n".join(lines) + "\n"


def readme_with_reference(readme: str) -> str:
    """configs/README.md with its generated key reference replaced (or appended)."""
    head = readme.split(REFERENCE_START)[0].rstrip("\n")
    tail = readme.split(REFERENCE_END, 1)[1].lstrip("\n") if REFERENCE_END in readme else ""
    return head + "\n\n" + reference_markdown() + (("\n" + tail) if tail else "")

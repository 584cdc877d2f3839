"""Preflight: before any stage runs or any run folder exists, is everything a config needs here?

`affectflow check` and the start of `affectflow run` validate the config (keys, types, local
paths, devices: `pipelines/config.py`), then look for what validation cannot see:

- every timm model name the config gives is one timm knows (a close name is suggested);
- every model spec the run's stages name (found from the params' own types, `ModelSpecField`)
  resolves to weights on this machine: a local file or folder, a pip-packaged model, or the
  libraries' download caches (`models/weights_cache.py`). When the hub is unreachable
  (HF_HUB_OFFLINE, or no network) a spec whose weights are not cached is a problem; online it
  is fine (the loader downloads it), unless the hub does not know the repo;
- every dataset path has the layout its source expects (`stages/ingest/layout.py`).

Problems are reported together, one line each, naming the config key, the spec or path and the
fix. Nothing here imports a stage's model code; torch comes in only through the libraries'
pretrained registries (open_clip, timm) when a config names one of their tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from affectflow.core.errors import UserError
from affectflow.models.weights_cache import (
    hub_offline_reason,
    hub_repo_exists,
    locate_weights,
    unknown_architecture,
)
from affectflow.pipelines.config import stage_params
from affectflow.stages.ingest.layout import describe_layout
from affectflow.stages.ingest.stage import IngestParams
from affectflow.stages.param_types import ModelSpecField


@dataclass(frozen=True)
class ModelNeed:
    """One model spec a config names: its key (`teacher.text_encoder`), kind and spec."""

    key: str
    kind: str
    spec: str
    pretrained: bool


@dataclass
class PreflightReport:
    """What was found (`found`) and what is missing (`problems`), one line each."""

    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    offline: str | None = None


def model_needs(section: str, params: BaseModel) -> list[ModelNeed]:
    """The model specs of one stage's params, from the fields typed as model specs."""
    needs = []
    for name, info in type(params).model_fields.items():
        marker = next((item for item in info.metadata if isinstance(item, ModelSpecField)), None)
        value = getattr(params, name)
        if marker is None or not value:
            continue
        pretrained = bool(getattr(params, marker.weights_flag)) if marker.weights_flag else True
        needs.append(ModelNeed(f"{section}.{name}", marker.kind, str(value), pretrained))
    return needs


def preflight(config: Any, stages: list[str] | None = None) -> PreflightReport:
    """Check the models and datasets of `stages` (default: the run's stages)."""
    report = PreflightReport()
    sections = {name: stage_params(config, name) for name in (stages or config.run.stages)}
    needs = [need for name, params in sections.items() for need in model_needs(name, params)]
    unresolved = []
    for need in needs:
        unknown = unknown_architecture(need.kind, need.spec)  # type: ignore[arg-type]
        if unknown is not None:
            report.problems.append(f"{need.key} = {need.spec!r}: {unknown}")
            continue
        located = locate_weights(need.kind, need.spec, need.pretrained)  # type: ignore[arg-type]
        if located is None:
            report.found.append(f"{need.key} = {need.spec}: random init, no weights to load")
        elif located.found:
            report.found.append(f"{need.key} = {need.spec}: {located.where}")
        else:
            unresolved.append((need, located))
    if any(located.hub is not None for _, located in unresolved):
        report.offline = hub_offline_reason()
    for need, located in unresolved:
        if located.hub is not None and report.offline is None:
            if hub_repo_exists(located.hub.repo_id) is False:
                report.problems.append(f"{need.key} = {need.spec!r}: the Hugging Face hub has no repo "
                                       f"{located.hub.repo_id!r}; fix the spec's name")
            else:
                report.found.append(f"{need.key} = {need.spec}: not cached yet, downloaded on first use")
            continue
        report.problems.append(f"{need.key} = {need.spec!r}: {located.where}; {located.fix}")
    for name, params in sections.items():
        if isinstance(params, IngestParams):
            description, problems = describe_layout(params, name)
            report.problems += problems
            if not problems:
                report.found.append(f"{name}.path = {params.path}: {description}")
    return report


def require_ready(config: Any, source: str, stages: list[str] | None = None) -> PreflightReport:
    """The preflight, raising one UserError that lists every problem (exit code 2 in the CLI)."""
    report = preflight(config, stages)
    if report.problems:
        why = f" ({report.offline})" if report.offline else ""
        raise UserError(f"{source}: {len(report.problems)} model(s) or dataset(s) this run needs are "
                        f"missing or misnamed{why}:\n  " + "\n  ".join(report.problems),
                        hint="fix each as its line says, then rerun; `affectflow check` with the "
                             "same config and --set options repeats this check without starting anything")
    return report

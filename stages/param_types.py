"""Param field types shared by stages, each validated the same way wherever it appears."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from affectflow.models.specs import SpecKind, check_spec


@dataclass(frozen=True)
class ModelSpecField:
    """Marks a param as a model spec of `kind`, so the preflight finds every model a config
    names from the params' own types. `weights_flag` names the bool param (or property) that
    says whether the spec's weights are loaded at all (`pretrained: false` = random init,
    nothing to find)."""

    kind: SpecKind
    weights_flag: str | None = None


def _device_available(value: str | None) -> str | None:
    from affectflow.models.encoder_runtime import resolve_device

    resolve_device(value)
    return value


def _ground_truth_exists(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"ground truth file does not exist: {value} (the demo writes one at "
                         f"artifacts/demo-data/ground_truth.csv; or leave it unset)")
    return value


Device = Annotated[str | None, AfterValidator(_device_available),
                   Field(description="cpu, cuda, cuda:N; default: the GPU when present")]
ClipModel = Annotated[str, AfterValidator(partial(check_spec, "clip")), ModelSpecField("clip")]
"""An open_clip CLIP spec (models/specs.py); a local folder or checkpoint it names must exist."""
TransformersModel = Annotated[str, AfterValidator(partial(check_spec, "transformers")),
                             ModelSpecField("transformers")]
"""A transformers model: hub id, saved folder or `packaged:<name>`."""
VisualEncoder = Annotated[str, AfterValidator(partial(check_spec, "visual")),
                         ModelSpecField("visual", weights_flag="pretrained")]
"""A visual encoder spec, `timm:...` or `open_clip:...`."""
TimmModel = Annotated[str, ModelSpecField("timm", weights_flag="loads_pretrained_weights"),
                     Field(description="timm model name (convolutional)")]
"""A bare timm model name; timm's registry checks it at preflight (it imports torch)."""
GroundTruthCsv = Annotated[Path | None, AfterValidator(_ground_truth_exists),
                           Field(description="the demo's ground_truth.csv, for recovery reports")]

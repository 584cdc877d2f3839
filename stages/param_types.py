"""Param field types shared by stages, each validated the same way wherever it appears."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from affectflow.models.encoder_runtime import resolve_device


def _device_available(value: str | None) -> str | None:
    resolve_device(value)
    return value


def _ground_truth_exists(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"ground truth file does not exist: {value} (the demo writes one at "
                         f"artifacts/demo-data/ground_truth.csv; or leave it unset)")
    return value


Device = Annotated[str | None, AfterValidator(_device_available),
                   Field(description="cpu, cuda, cuda:N; default: the GPU when present")]
GroundTruthCsv = Annotated[Path | None, AfterValidator(_ground_truth_exists),
                           Field(description="the demo's ground_truth.csv, for recovery reports")]

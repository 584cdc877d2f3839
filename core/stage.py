"""The contract every stage implements, independent of Prefect.

A stage declares its name, the upstream stages it reads, a validated params model and the Arrow
schema of its main table. The runner calls, in order:

- `prepare(ctx)` once per new fingerprint (e.g. list the source files, compute statistics),
  returning the shard ids to process;
- `setup(ctx)` once per process, to load models (cached by the runner);
- `process(ctx, state, shard_id)` per shard, returning rows kept and rows rejected;
- `finalize(ctx)` once after all shards, for summaries and pictures.

Shard `i` of a map stage derives from shard `i` of its first input, so shards of different
stages line up by number and joins stay shard-local.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from affectflow.core.codeversion import code_record
from affectflow.core.store import MAIN_TABLE, StageArtifact, empty_rejects


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class ShardOutput:
    """What one shard produced: tables by name (`main` + side tables) and the rejected rows.

    `rows_in` is the number of input rows the shard consumed; the runner checks that
    rows_in == rows in `main` + rejected rows, so accounting always closes.
    """

    rows_in: int
    tables: dict[str, pa.Table]
    rejects: pa.Table = field(default_factory=empty_rejects)
    # Set by the runner: the one-time `setup` (model loading) this shard paid for, if any.
    setup_seconds: float = 0.0

    @property
    def main(self) -> pa.Table:
        return self.tables[MAIN_TABLE]


P = TypeVar("P", bound=StageParams)


@dataclass(frozen=True)
class TableRef:
    """Named columns of one table of a stage's artifact: what a stage declares it reads.

    The runner checks every declared read against the input's recorded schema before the stage
    starts, so a renamed upstream column fails at once with the names, not deep inside a shard.
    """

    stage: str
    columns: tuple[str, ...]
    table: str = MAIN_TABLE


@dataclass
class StageContext(Generic[P]):
    """Everything a stage may touch: its params, its inputs, its own folders, run-wide settings."""

    stage_name: str
    params: P
    inputs: dict[str, StageArtifact]
    output_dir: Path
    work_dir: Path
    run_dir: Path
    settings: Any
    fingerprint: str

    def input(self, name: str) -> StageArtifact:
        return self.inputs[name]


class Stage(ABC, Generic[P]):
    """Base class: subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    # The columns read from each input (`TableRef`s); checked against the inputs' schemas.
    reads: ClassVar[tuple[TableRef, ...]] = ()
    Params: type[P]
    schema: ClassVar[pa.Schema]
    side_schemas: ClassVar[dict[str, pa.Schema]] = {}
    schema_version: ClassVar[int] = 1
    # True when shards are independent and cheap to set up, so an orchestrator may run them as
    # parallel tasks (and `run_stage` works on two at once); stages that hold a model process
    # their shards in one task, one after the other, instead.
    shard_parallel: ClassVar[bool] = False
    # True when the stage runs a model: its task carries the GPU tag, so a Prefect concurrency
    # limit on that tag (one slot per GPU) keeps two model stages off the same device.
    uses_accelerator: ClassVar[bool] = False

    def input_names(self, params: P) -> tuple[str, ...]:
        """Inputs this configuration actually reads (a subset of `inputs`, which is the maximum
        set and fixes the stage order)."""
        return self.inputs

    def code(self) -> dict[str, Any]:
        """The project modules of the stage's import closure (with their hashes), the library
        versions that code imports, and their combined `version` (core/codeversion.py)."""
        return code_record(type(self).__module__)

    def check_config(self, params: P, sections: dict[str, Any]) -> None:
        """Raise ValueError when these params contradict another stage's section of the same
        config (`sections`: stage name -> its params, for the stages the run lists)."""

    def output_schema(self, params: P) -> pa.Schema:
        """The main table's schema; stages whose columns depend on params override this."""
        return self.schema

    def source_fingerprint(self, params: P, settings: Any) -> str | None:
        """Fingerprint of external inputs (files outside the run); None for stages without any."""
        return None

    def prepare(self, ctx: StageContext[P]) -> list[int]:
        """Default for map stages: one shard per shard of the first input."""
        return ctx.input(self.input_names(ctx.params)[0]).shard_ids()

    def setup(self, ctx: StageContext[P]) -> Any:
        return None

    @abstractmethod
    def process(self, ctx: StageContext[P], state: Any, shard_id: int) -> ShardOutput:
        """Turn one shard of input into rows kept and rows rejected."""

    def finalize(self, ctx: StageContext[P]) -> dict[str, Any]:
        """Summaries beyond counts (pictures, statistics); returned dict goes into the manifest."""
        return {}

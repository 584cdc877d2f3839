"""Stage registry: name -> stage class, and the order of the pretraining chain."""

from __future__ import annotations

from affectflow.core.errors import UserError
from affectflow.core.stage import Stage
from affectflow.stages.caption import CaptionStage
from affectflow.stages.cluster import ClusterStage
from affectflow.stages.cternet_eval import CTERNetEvalStage
from affectflow.stages.cternet_train import CTERNetTrainStage
from affectflow.stages.emotional import EmotionalStage
from affectflow.stages.factual import FactualStage
from affectflow.stages.ingest import IngestStage
from affectflow.stages.pacl import PaclStage
from affectflow.stages.partition import PartitionStage
from affectflow.stages.probe import ProbeStage
from affectflow.stages.probe_ingest import ProbeIngestStage
from affectflow.stages.triplets import TripletsStage

STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in (
    IngestStage, CaptionStage, TripletsStage, FactualStage, EmotionalStage, PartitionStage,
    ClusterStage, PaclStage, ProbeIngestStage, ProbeStage, CTERNetTrainStage, CTERNetEvalStage)}

PRETRAIN_CHAIN: tuple[str, ...] = ("ingest", "caption", "triplets", "factual", "emotional",
                                   "partition", "cluster", "pacl", "probe_ingest", "probe")


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}", hint=f"known stages: {', '.join(STAGES)}")
    return STAGES[name]()


def downstream_of(name: str, chain: tuple[str, ...] | list[str]) -> list[str]:
    """Stages of `chain` that read `name` directly or through other stages, in chain order."""
    affected = {name}
    result = []
    for stage_name in chain:
        if stage_name in affected:
            continue
        if any(dep in affected for dep in STAGES[stage_name].inputs):
            affected.add(stage_name)
            result.append(stage_name)
    return result

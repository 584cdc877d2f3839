"""Stage registry: name -> stage class, and the order of the pretraining chain."""

from __future__ import annotations

from typing import Any

from affectflow.core.errors import UserError, did_you_mean
from affectflow.core.stage import Stage
from affectflow.stages.cluster.stage import ClusterStage
from affectflow.stages.cternet.evaluate import CTERNetEvalStage
from affectflow.stages.cternet.train import CTERNetTrainStage
from affectflow.stages.emotional import EmotionalStage
from affectflow.stages.factual import FactualStage
from affectflow.stages.ingest.stage import IngestStage
from affectflow.stages.knowledge.caption import CaptionStage
from affectflow.stages.knowledge.knowledge import KnowledgeStage
from affectflow.stages.knowledge.triplets import TripletsStage
from affectflow.stages.pacl.stage import PaclStage
from affectflow.stages.partition.stage import PartitionStage
from affectflow.stages.probe.ingest import ProbeIngestStage
from affectflow.stages.probe.stage import ProbeStage
from affectflow.stages.teacher import TeacherStage

STAGES: dict[str, type[Stage[Any]]] = {cls.name: cls for cls in (
    IngestStage, CaptionStage, TripletsStage, KnowledgeStage, FactualStage, EmotionalStage,
    TeacherStage, PartitionStage, ClusterStage, PaclStage, ProbeIngestStage, ProbeStage,
    CTERNetTrainStage, CTERNetEvalStage)}

PRETRAIN_CHAIN: tuple[str, ...] = ("ingest", "caption", "triplets", "knowledge", "factual",
                                   "emotional", "teacher", "partition", "cluster", "pacl",
                                   "probe_ingest", "probe")


def get_stage(name: str) -> Stage[Any]:
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}{did_you_mean(name, STAGES)}",
                        hint=f"known stages: {', '.join(STAGES)}")
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

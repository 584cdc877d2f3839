"""`probe_ingest`: the labelled evaluation set (FI, Emotion6, ...), ingested by the ingest stage's
own code under a second name, so one run holds both the posts and the labelled images."""

from __future__ import annotations

from affectflow.stages import ingest
from affectflow.stages.ingest import IngestStage


class ProbeIngestStage(IngestStage):
    name = "probe_ingest"
    # The ingest code itself: editing it re-ingests the labelled set as well.
    code_modules = (ingest, *IngestStage.code_modules)

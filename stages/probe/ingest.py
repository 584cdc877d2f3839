"""`probe_ingest`: the labelled evaluation set (FI, Emotion6, ...), ingested by the ingest stage's
own code under a second name, so one run holds both the posts and the labelled images."""

from __future__ import annotations

from affectflow.stages.ingest.stage import IngestStage


class ProbeIngestStage(IngestStage):
    name = "probe_ingest"

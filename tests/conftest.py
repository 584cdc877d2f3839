"""Shared fixtures: a small demo dataset, tiny dataset builders for ingest tests, and a Prefect
test harness (temporary local API + database) for the flow and CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from affectflow.demo.generate import generate_demo
from affectflow.demo.models import build_demo_models
from affectflow.pipelines.cli import main
from affectflow.pipelines.prefect_env import configure_prefect_env, guard_ephemeral_server

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run much faster on one torch thread on a shared 2-core machine; restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    configure_prefect_env(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        guard_ephemeral_server()  # a killed test session leaves no server behind
        yield


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-post demo dataset with its demo models (a briefly trained tiny CLIP), built once."""
    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, posts=60, seed=7, per_class=10, caption_pairs=640, lighting=False,
                  emotic_images=70, webemo_per_class=8)
    build_demo_models(out, epochs=8, seed=0, captioner_epochs=3)
    return out


@pytest.fixture(scope="session")
def colour_captioners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny BLIP and InstructBLIP trained to name a picture's colour, saved once per session."""
    from tests.models.colour_captioners import train_colour_captioner

    return {kind: train_colour_captioner(kind, tmp_path_factory.mktemp(kind) / "trained")
            for kind in ("blip", "instructblip")}


def write_image(path: Path, size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (200, 40, 40),
                fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def write_tumemo(root: Path, posts: dict[str, tuple[str, str]]) -> Path:
    """TumEmo layout from {id: (label, text)}; every post gets a valid 64x64 image."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["id label"]
    for post_id, (label, text) in posts.items():
        write_image(root / f"{post_id}.jpg")
        (root / f"{post_id}.txt").write_text(text, encoding="utf-8")
        lines.append(f"{post_id} {label}")
    (root / "all_data_id_and_label.txt").write_text("\n".join(lines) + "\n")
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str, quiet: bool = True) -> tuple[int, str, str]:
    """An `affectflow` command run in this process: its exit code, stdout and stderr; `quiet`:
    errors and the run-end summary only."""
    code = main(["--quiet", *argv] if quiet else list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err

"""The console: levels per origin, each warning once, --quiet/--debug anywhere, progress lines,
config messages, the generated key reference, read-only commands without torch or Prefect."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from affectflow.core import progress as progress_module
from affectflow.core.console import ConsoleFilter, Verbosity
from affectflow.core.errors import UserError
from affectflow.core.runs import RunStore
from affectflow.pipelines.cli import build_parser
from affectflow.pipelines.config import (
    REFERENCE_FILE,
    config_snapshot,
    load_config,
    readme_with_reference,
    section_text,
)
from affectflow.pipelines.execution import code_version
from affectflow.pipelines.inspect import HEADLINES, readable
from affectflow.stages.registry import STAGES

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "prefect", "open_clip", "transformers", "faiss", "timm", "sklearn", "matplotlib", "spacy")
"""Libraries a command that computes nothing must not import (seconds each on a busy machine)."""


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def shown(verbosity: Verbosity, records: list[logging.LogRecord]) -> list[str]:
    console = ConsoleFilter(verbosity)
    return [f"{r.name}:{r.getMessage()}" for r in records if console.filter(r)]


def test_libraries_at_warning_the_project_at_info_each_warning_once() -> None:
    records = [record("faiss.loader", logging.INFO, "Loading faiss with AVX2 support."),
               record("root", logging.INFO, "Parsing tokenizer identifier"),
               record("httpx", logging.INFO, "HTTP Request: POST"),
               record("prefect.task_runs", logging.INFO, "Finished in state Completed()"),
               record("prefect.flow_runs", logging.ERROR, "Finished in state Failed()"),
               record("affectflow.core.runner", logging.INFO, "ingest: 10 in = 9 out + 1 rejected"),
               record("transformers.tokenization", logging.WARNING, "max_length is deprecated"),
               record("transformers.tokenization", logging.WARNING, "max_length is deprecated"),
               record("affectflow.x", logging.ERROR, "boom")]
    assert shown(Verbosity.NORMAL, records) == [
        "affectflow.core.runner:ingest: 10 in = 9 out + 1 rejected",
        "transformers.tokenization:max_length is deprecated", "affectflow.x:boom"]
    assert shown(Verbosity.QUIET, records) == ["affectflow.x:boom"]
    debug = shown(Verbosity.DEBUG, records)
    assert "faiss.loader:Loading faiss with AVX2 support." in debug
    assert "prefect.flow_runs:Finished in state Failed()" in debug


def test_repeated_warnings_are_counted() -> None:
    console = ConsoleFilter(Verbosity.NORMAL)
    for _ in range(3):
        console.filter(record("py.warnings", logging.WARNING, "UserWarning: x"))
    assert console.repeat_note() == "2 repeated warning(s) not shown again"


@pytest.mark.parametrize("argv", [["--debug", "runs"], ["runs", "--debug"]])
def test_debug_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.debug is True and args.quiet is False


def test_quiet_after_the_command() -> None:
    args = build_parser().parse_args(["inspect", "r1", "--quiet"])
    assert args.quiet is True and args.debug is False


def test_progress_lines_name_the_stage_place_when_not_a_terminal(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "live_display_wanted", lambda: False)
    progress_module.set_stage_order(["ingest", "caption", "triplets"])
    with caplog.at_level(logging.INFO, logger="affectflow.core.progress"):
        with progress_module.Progress("caption shard 0", total=4, unit="rows", interval=0.0) as work:
            work.advance(2)
            work.advance(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("stage 2/3 caption shard 0: 2/4 rows")
    assert "ETA" in lines[0]
    assert lines[-1].startswith("stage 2/3 caption shard 0: 4 rows in")
    progress_module.set_stage_order([])


def test_live_display_rows_come_and_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal each piece of work is a row of one rich display, gone once finished."""
    monkeypatch.setattr(progress_module, "live_display_wanted", lambda: True)
    first = progress_module.Progress("ingest", total=2, unit="shards")
    second = progress_module.Progress("factual", total=1, unit="shards")
    display = progress_module._DISPLAY["progress"]
    assert len(display.tasks) == 2
    first.advance(1, rows=128)
    task = next(t for t in display.tasks if t.description.endswith("ingest"))
    assert task.completed == 1 and task.fields["rows"] == 128
    second.advance(1)  # finished work leaves the display without close()
    assert len(display.tasks) == 1
    first.close()
    assert "progress" not in progress_module._DISPLAY


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_the_file_and_the_closest_key(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  stages: [ingest]\ningest:\n  source: tumemo\n"
                           f"  path: {tmp_path}\n  shard_sise: 3\n")
    with pytest.raises(UserError) as error:
        load_config(path)
    assert str(path) in error.value.message
    assert "did you mean 'shard_size'?" in error.value.message
    assert "affectflow config show ingest" in error.value.hint


def test_range_error_names_key_bound_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "run:\n  stages: [ingest]\ningest:\n  source: tumemo\n"
                           f"  path: {tmp_path}\n  shard_size: 0\n")
    with pytest.raises(UserError) as error:
        load_config(path)
    assert "'ingest.shard_size' must be >= 1, got 0" in error.value.message
    assert "<value>" not in error.value.hint and "ingest.shard_size" in error.value.hint


def test_unknown_stage_and_section_suggest_the_closest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="did you mean 'partition'"):
        load_config(write(tmp_path, "run:\n  stages: [ingest, partiton]\n"))
    with pytest.raises(UserError, match="unknown section 'ingets'; did you mean 'ingest'"):
        load_config(write(tmp_path, "ingets: {}\n"))


def test_saved_config_errors_name_the_run(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_config(None, raw={"nope": {}}, source="the saved config of run r1")
    assert "the saved config of run r1" in error.value.message and "<config>" not in error.value.message


def test_config_show_lists_keys_types_defaults_descriptions() -> None:
    text = section_text("run")
    assert any(line.split() == ["workers", "int", "(default:", "2)"] for line in text.splitlines())
    assert "parallel decode / shard workers" in text
    with pytest.raises(UserError, match="did you mean 'ingest'"):
        section_text("ingset")


def test_committed_key_reference_is_the_generated_one() -> None:
    committed = REFERENCE_FILE.read_text(encoding="utf-8")
    assert committed == readme_with_reference(committed), \
        "configs/README.md's key reference is stale: run `make config-reference`"


def test_readable_summary_and_headlines() -> None:
    lines = readable({"ks": [2, 3, 7], "by_k": {"2": {"ari": 0.123456, "sizes": list(range(20))}},
                      "table": [{"evaluation": "linear", "accuracy_delta": 0.1}], "note": "a\x1b[2Jb"})
    assert lines[0] == "  ks: [2, 3, 7]"
    assert "      ari: 0.1235" in lines
    assert any("… (20 values)" in line for line in lines)
    assert "    - evaluation linear, accuracy_delta 0.1" in lines
    assert "\x1b" not in "\n".join(lines)
    rows = [{"task": "single_label", "evaluation": "linear", "level": None, "metric": metric,
             "before": 0.5, "after": 0.625, "delta": 0.125} for metric in ("Acc", "wF1")]
    assert HEADLINES["probe"]({"table": rows}) == "single_label/linear Acc 0.500 -> 0.625 (Δ +0.125)"


def test_read_only_commands_import_neither_torch_nor_prefect(tmp_path: Path) -> None:
    # A run as `affectflow run` creates it (its saved config, no stage computed yet).
    # Every stage's params are validated when a run's state is derived: CTERNet's names a timm
    # model, whose registry is asked only at preflight.
    config = write(tmp_path, f"run:\n  stages: [ingest, cternet_train]\ningest:\n  source: tumemo\n"
                             f"  path: {tmp_path}\ncternet_train:\n  backbone: res2net101d\n")
    RunStore(tmp_path, "r1").create(config_snapshot(load_config(config)), code_version())
    script = ("import sys\nfrom affectflow.pipelines.cli import main\n"
              f"for argv in (['runs', '--artifact-root', {str(tmp_path)!r}],"
              f" ['inspect', 'r1', '--artifact-root', {str(tmp_path)!r}]):\n"
              "    assert main(argv) == 0\n"
              f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
              "print('heavy:', heavy)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout


def test_config_errors_and_unknown_stages_import_no_heavy_library(tmp_path: Path) -> None:
    """Every stage module is imported (the registry) and a config validated; nothing heavy loads."""
    config = tmp_path / "exp.yaml"
    config.write_text("run:\n  stages: [ingest, factual, emotional, partition]\ningest:\n  nope: 1\n")
    script = ("import sys\nfrom affectflow.core.errors import UserError\n"
              "from affectflow.pipelines.config import load_config\n"
              "from affectflow.stages.registry import STAGES, get_stage\n"
              "for attempt in (lambda: load_config(__import__('pathlib').Path(sys.argv[1])),"
              " lambda: get_stage('partiton')):\n"
              "    try:\n        attempt()\n    except UserError as error:\n        print(error.message)\n"
              f"print('heavy:', [m for m in {HEAVY!r} if m in sys.modules], len(STAGES))\n")
    done = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unknown key 'ingest.nope'" in done.stdout and "did you mean 'partition'" in done.stdout
    assert f"heavy: [] {len(STAGES)}" in done.stdout


def test_code_versions_are_computed_without_importing_the_stages_libraries() -> None:
    """A no-change rerun hashes every stage's import closure; that must not load torch & co."""
    script = ("import sys\nfrom affectflow.stages.registry import STAGES\n"
              "versions = [stage().code()['version'] for stage in STAGES.values()]\n"
              f"print('heavy:', [m for m in {HEAVY!r} if m in sys.modules], len(set(versions)))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("heavy: [] ")


def test_python_dash_m_affectflow() -> None:
    done = subprocess.run([sys.executable, "-m", "affectflow", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage: affectflow" in done.stdout

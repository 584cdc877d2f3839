"""CLIP loading and encoding: the factual scorer of PACL stage 1 and the ANP scorer's backbone.

A CLIP model is named by a spec a user understands, resolved through open_clip's own factory
so that real runs and tests share one loading path:

- ``ViT-B-32:laion2b_s34b_b79k``  architecture + pretrained tag (open_clip hub loading, online)
- ``ViT-B-32``                     architecture only, random init (logged as a warning)
- ``ViT-B-32:/path/to/ckpt.pt``    architecture + local checkpoint (loaded weights-only)
- ``/path/to/directory``           ``open_clip_config.json`` + weights, the open_clip / HF hub
                                   layout (also accepted as ``local-dir:/path``); `save_clip`
                                   writes it
- ``hf-hub:org/repo``              open_clip's hub repo form, passed through unchanged
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from affectflow.core.atomic import atomic_path, write_json
from affectflow.models.encoder_runtime import inference_context, resolve_device
from affectflow.models.specs import LOCAL_DIR, parse_clip_spec

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "open_clip_config.json"
WEIGHTS_FILENAME = "open_clip_model.safetensors"
# Weight files open_clip's local-dir loader looks for, in its order of preference.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
# open_clip's SimpleTokenizer vocabulary size: a CLIP text tower must match it exactly.
SIMPLE_TOKENIZER_VOCAB_SIZE = 49408


@dataclass
class ClipBundle:
    """A loaded CLIP with everything needed to encode raw inputs the way it was trained."""

    spec: str
    model: nn.Module
    preprocess: Callable[[Any], Tensor]
    tokenizer: Callable[..., Tensor]
    context_length: int
    device: torch.device

    @property
    def logit_scale(self) -> float:
        """CLIP's learned inverse temperature (exp of the stored log value)."""
        return float(self.model.logit_scale.detach().exp())


def load_clip(spec: str | os.PathLike[str], device: str | torch.device | None = None) -> ClipBundle:
    """Load a CLIP model, its inference image transform and its tokenizer from a spec."""
    spec_text = str(spec)
    model_name, pretrained = _resolve_spec(spec_text)
    resolved_device = resolve_device(device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=resolved_device
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipBundle(
        spec=spec_text,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        context_length=int(tokenizer.context_length),
        device=resolved_device,
    )


def _resolve_spec(spec: str) -> tuple[str, str | None]:
    """Turn a user spec into open_clip's (model_name, pretrained) pair, failing early and clearly."""
    parsed = parse_clip_spec(spec)
    if parsed.form == "hub":
        return spec, None
    if parsed.form == "folder":
        assert parsed.source is not None
        return _local_dir_name(Path(parsed.source).expanduser()), None
    architecture = parsed.architecture or ""
    if architecture not in open_clip.list_models():
        raise ValueError(
            f"CLIP spec {spec!r}: {architecture!r} is neither an open_clip architecture "
            "(see open_clip.list_models()) nor an existing model directory"
        )
    if parsed.form == "random":
        logger.warning("CLIP spec %r names no weights: the model is randomly initialised", spec)
        return architecture, None
    source = parsed.source or ""
    if parsed.form == "checkpoint":
        if not Path(source).is_file():
            raise FileNotFoundError(f"CLIP spec {spec!r}: checkpoint file {source} does not exist")
        return architecture, source
    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if source in tags:
        return architecture, source
    raise ValueError(
        f"CLIP spec {spec!r}: {source!r} is neither a pretrained tag of {architecture} "
        f"(known tags: {', '.join(tags) or 'none'}) nor an existing checkpoint file"
    )


def _local_dir_name(directory: Path) -> str:
    """open_clip's local-dir model name, after checking the directory really holds a model."""
    if not directory.is_dir():
        raise FileNotFoundError(f"CLIP directory {directory} does not exist")
    if not (directory / CONFIG_FILENAME).is_file():
        raise FileNotFoundError(
            f"CLIP directory {directory} has no {CONFIG_FILENAME}; write one with save_clip() "
            "or point the spec at an open_clip model directory"
        )
    if not any(path.suffix in _WEIGHT_SUFFIXES for path in directory.iterdir()):
        raise FileNotFoundError(
            f"CLIP directory {directory} has a config but no weights "
            f"({WEIGHTS_FILENAME} or another *.safetensors / *.bin / *.pth file)"
        )
    return f"{LOCAL_DIR}{directory.resolve()}"


def save_clip(
    model: nn.Module,
    model_cfg: Mapping[str, Any],
    directory: str | os.PathLike[str],
    preprocess_cfg: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` in the directory layout `load_clip` (and open_clip's local-dir) reads.

    `preprocess_cfg` defaults to the one open_clip attached to a model it loaded, so a
    fine-tuned model keeps its image normalisation; a freshly built model gets open_clip's
    defaults. A text tower with an HF tokenizer (`text_cfg.hf_tokenizer_name`) also needs that
    tokenizer saved into `directory` (`tokenizer.save_pretrained`), where open_clip looks for it.
    """
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise ValueError(f"model_cfg lacks {missing}; pass the config the model was built from")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(target / WEIGHTS_FILENAME) as tmp:
        save_file(tensors, str(tmp))
    if preprocess_cfg is None:
        preprocess_cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None)
    config: dict[str, Any] = {"model_cfg": dict(model_cfg)}
    if preprocess_cfg is not None:
        config["preprocess_cfg"] = dict(preprocess_cfg)
    # The config goes last: a directory with a config but torn weights cannot appear.
    write_json(target / CONFIG_FILENAME, config)
    return target


def tiny_clip_config(
    embed_dim: int = 64,
    image_size: int = 64,
    patch_size: int = 16,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    context_length: int = 32,
) -> dict[str, Any]:
    """A small ViT CLIP config (a few M parameters) for tests and the demo; real runs use hub specs."""
    for name, value in (
        ("embed_dim", embed_dim),
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("width", width),
        ("layers", layers),
        ("heads", heads),
        ("context_length", context_length),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    if width % heads:
        raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
    if context_length < 3:
        raise ValueError(f"context_length must be >= 3 (start, one token, end), got {context_length}")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            "head_width": width // heads,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": SIMPLE_TOKENIZER_VOCAB_SIZE,
            "width": width,
            "heads": heads,
            "layers": layers,
        },
    }


def encode_images(bundle: ClipBundle, pixel_batch: Tensor) -> Tensor:
    """L2-normalised float32 image embeddings (on CPU) of an already preprocessed (B, 3, H, W) batch."""
    if pixel_batch.ndim != 4:
        raise ValueError(f"pixel_batch must be (batch, channels, height, width), got {tuple(pixel_batch.shape)}")
    with inference_context(bundle.device):
        features = bundle.model.encode_image(pixel_batch.to(bundle.device, non_blocking=True))
    return F.normalize(features.float(), dim=-1).cpu()


def encode_texts(bundle: ClipBundle, texts: Sequence[str], batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """L2-normalised float32 text embeddings (on CPU) and a bool mask of texts cut at the context length.

    Long posts are truncated by the tokenizer as CLIP was trained; the mask lets a stage count
    or flag them instead of failing.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_texts(texts)
    embeddings: list[Tensor] = []
    truncated: list[Tensor] = []
    # An empty input still runs one (empty) batch so the result keeps the embedding width.
    for start in range(0, max(len(texts), 1), batch_size):
        chunk = list(texts[start : start + batch_size])
        tokens, chunk_truncated = tokenize_reporting_truncation(bundle, chunk)
        with inference_context(bundle.device):
            features = bundle.model.encode_text(tokens.to(bundle.device, non_blocking=True))
        embeddings.append(F.normalize(features.float(), dim=-1).cpu())
        truncated.append(chunk_truncated)
    return torch.cat(embeddings), torch.cat(truncated)


def encode_text_tokens(bundle: ClipBundle, texts: Sequence[str],
                       batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """`encode_texts`' pooled embeddings and truncation mask, plus every token's output of the
    text tower's final layer norm, before pooling and projection (float32, on CPU, (n, context
    length, width)): what Hugging Face's CLIPTextModel calls `last_hidden_state`, the token-level
    text features KCDP's public code feeds on. One forward pass gives both."""
    final_norm = _text_final_norm(bundle)
    captured: list[Tensor] = []
    handle = final_norm.register_forward_hook(
        lambda _module, _inputs, output: captured.append(output.detach().float().cpu()))
    try:
        pooled, truncated = encode_texts(bundle, texts, batch_size)
    finally:
        handle.remove()
    return pooled, torch.cat(captured), truncated


def _text_final_norm(bundle: ClipBundle) -> nn.Module:
    """The text tower's last layer norm (open_clip's CLIP keeps it on the model, CustomTextCLIP
    on its `text` tower); towers without one (HF text encoders) have no token outputs to offer."""
    for owner in (bundle.model, getattr(bundle.model, "text", None)):
        module = getattr(owner, "ln_final", None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"CLIP {bundle.spec!r} has no open_clip text transformer (no ln_final), so it "
                     "has no token-level text outputs; use representation: pooled")


def tokenize_reporting_truncation(bundle: ClipBundle, texts: list[str]) -> tuple[Tensor, Tensor]:
    """Token ids at the context length, plus which texts did not fit.

    A text fits iff tokenising it with one spare slot yields the same first `context_length`
    ids: a text that was cut ends in the end-of-text token at the last slot, whereas with
    room to spare that slot holds its next real token. This uses only the tokenizer's public
    call, so it holds for open_clip's BPE, HF and SigLIP tokenizers alike; it assumes
    deterministic, right-padded output, which open_clip's random token-reduction masks and
    its "clips" HF mode (class token in the last slot) do not give.
    """
    tokens = bundle.tokenizer(texts, context_length=bundle.context_length)
    with_spare_slot = bundle.tokenizer(texts, context_length=bundle.context_length + 1)
    truncated = (with_spare_slot[:, : bundle.context_length] != tokens).any(dim=1)
    return tokens, truncated


def text_tower_fingerprint(bundle: ClipBundle) -> str:
    """SHA-256 over every non-visual weight: identifies what the text embeddings depend on.

    A spec alone does not (a random-init spec or a rewritten directory changes the weights
    under the same name), so caches of text embeddings key on this.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(bundle.model.state_dict().items()):
        if name.startswith("visual."):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(json.dumps([name, list(tensor.shape), str(tensor.dtype)]).encode("utf-8"))
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_texts(texts: Sequence[str]) -> None:
    """Reject non-string items up front with their position (tokenizers fail cryptically)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")

"""Image captioners (BLIP, InstructBLIP) behind one small interface.

A captioner is split into `preprocess` (RGB conversion, resizing and normalising into tensors; CPU
only, safe to run in worker processes) and `generate` (the model), so the captions stage can prepare the next batch
while the current one is being generated. Models are named by a hub id or a local directory
saved with `save_pretrained`; tests and the demo use tiny models built by `build_tiny_blip` /
`build_tiny_instructblip` and loaded back through the same `load_captioner`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectflow.models.specs import resolve_transformers_spec

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import (
        BertTokenizer,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )

KCDP_PROMPT = (
    "What is the information of subject in the picture? What is the facial expression and the "
    "body movement of the subject in the picture? What is the emotional meaning of the image? "
    "Please answer these question with a descriptive sentence."
)
"""InstructBLIP prompt of the KCDP paper (kept verbatim, including its grammar)."""

KCDP_GENERATION: dict[str, int | float] = {
    "num_beams": 5,
    "repetition_penalty": 5.0,
    "max_new_tokens": 50,
    "min_new_tokens": 30,
}
"""KCDP's InstructBLIP generation settings."""

BLIP_GENERATION: dict[str, int | float] = {
    "num_beams": 3,
    "repetition_penalty": 1.0,
    "max_new_tokens": 20,
    "min_new_tokens": 5,
}
"""BLIP paper captioning settings: beam size 3, caption length 5 to 20 tokens."""

GENERATION_KEYS = tuple(KCDP_GENERATION)


@dataclass
class CaptionBatch:
    """Model-ready tensors for `size` images; kept on CPU so workers can build it."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    size: int = 0


class Captioner(ABC):
    """Turns images into one caption each; `spec` names the model and settings for fingerprints."""

    spec: str

    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> CaptionBatch:
        """Convert images to a CPU batch; needs no model, so it can run in parallel workers."""

    @abstractmethod
    def generate(self, batch: CaptionBatch) -> list[str]:
        """Generate one caption per image of a prepared batch."""

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """Preprocess and generate in one call, for callers that need no overlap."""
        return self.generate(self.preprocess(images))


def validate_generation(settings: Mapping[str, Any]) -> dict[str, int | float]:
    """Check generation settings so a bad config fails before any image is captioned."""
    unknown = sorted(set(settings) - set(GENERATION_KEYS))
    if unknown:
        raise ValueError(f"unknown generation setting(s) {unknown}; allowed: {list(GENERATION_KEYS)}")
    checked: dict[str, int | float] = {}
    for key in ("num_beams", "max_new_tokens", "min_new_tokens"):
        if key in settings:
            value = settings[key]
            lowest = 0 if key == "min_new_tokens" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{key} must be an integer >= {lowest}, got {value!r}")
            checked[key] = value
    if "repetition_penalty" in settings:
        value = settings["repetition_penalty"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"repetition_penalty must be a number > 0 (1.0 = no penalty), got {value!r}")
        checked["repetition_penalty"] = float(value)
    low, high = checked.get("min_new_tokens", 0), checked.get("max_new_tokens")
    if high is not None and low > high:
        raise ValueError(f"min_new_tokens ({low}) must not exceed max_new_tokens ({high})")
    return checked


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    """Captioners expect 3-channel input; posts arrive as L, P, RGBA or CMYK too."""
    from PIL import Image

    converted = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{index}] must be a PIL.Image.Image, got {type(image).__name__}")
        converted.append(image if image.mode == "RGB" else image.convert("RGB"))
    return converted


@dataclass
class CaptionPreprocessor:
    """Processor plus prompt, without the model: cheap to pickle into worker processes."""

    processor: BlipProcessor | InstructBlipProcessor
    prompt: str | None

    def __call__(self, images: Sequence[Image.Image]) -> CaptionBatch:
        if len(images) == 0:
            return CaptionBatch()
        rgb = _rgb(images)
        texts = None if self.prompt is None else [self.prompt] * len(rgb)
        encoded = self.processor(images=rgb, text=texts, return_tensors="pt")
        return CaptionBatch(features=dict(encoded.items()), size=len(rgb))


class TransformersCaptioner(Captioner):
    """A transformers vision-to-text model plus its processor, run in eval mode without gradients."""

    def __init__(
        self,
        model: BlipForConditionalGeneration | InstructBlipForConditionalGeneration,
        preprocessor: CaptionPreprocessor,
        *,
        generation: Mapping[str, int | float],
        spec: str,
        device: torch.device,
    ) -> None:
        self.model = model.to(device).eval()
        self.preprocessor = preprocessor
        self.generation = dict(generation)
        self.spec = spec
        self.device = device

    @property
    def prompt(self) -> str | None:
        return self.preprocessor.prompt

    def preprocess(self, images: Sequence[Image.Image]) -> CaptionBatch:
        return self.preprocessor(images)

    def generate(self, batch: CaptionBatch) -> list[str]:
        from affectflow.models.encoder_runtime import inference_context

        if batch.size == 0:
            return []
        on_gpu = self.device.type == "cuda"
        inputs = {
            name: (value.pin_memory() if on_gpu else value).to(self.device, non_blocking=on_gpu)
            for name, value in batch.features.items()
        }
        with inference_context(self.device):
            tokens = self.model.generate(**inputs, **self.generation)
        texts = self.preprocessor.processor.batch_decode(tokens, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]


@dataclass(frozen=True)
class CaptionerKind:
    """How one captioner family is loaded and which prompt/settings it uses by default. The
    classes are named, not imported, so config validation reads the families without loading
    transformers."""

    model_class: str
    processor_class: str
    default_prompt: str | None
    default_generation: Mapping[str, int | float]

    def classes(self) -> tuple[Any, Any]:
        """(model class, processor class) from transformers."""
        import transformers

        return getattr(transformers, self.model_class), getattr(transformers, self.processor_class)


CAPTIONER_KINDS: dict[str, CaptionerKind] = {
    "blip": CaptionerKind("BlipForConditionalGeneration", "BlipProcessor", None, BLIP_GENERATION),
    "instructblip": CaptionerKind(
        "InstructBlipForConditionalGeneration", "InstructBlipProcessor", KCDP_PROMPT, KCDP_GENERATION
    ),
}
"""`blip`: e.g. Salesforce/blip-image-captioning-base (prompt optional, used as a caption prefix).
`instructblip`: e.g. Salesforce/instructblip-flan-t5-xl (KCDP prompt and settings by default)."""


def load_captioner(
    kind: str,
    name: str,
    device: str | torch.device | None = None,
    prompt: str | None = None,
    **generation: int | float,
) -> TransformersCaptioner:
    """Load a captioner by family (`blip` / `instructblip`) and hub id or local directory.

    `prompt=None` uses the family default (none for BLIP, the KCDP prompt for InstructBLIP);
    generation settings override the family defaults key by key.
    """
    from affectflow.models.encoder_runtime import resolve_device

    if kind not in CAPTIONER_KINDS:
        raise ValueError(f"unknown captioner kind {kind!r}; choose one of {sorted(CAPTIONER_KINDS)}")
    family = CAPTIONER_KINDS[kind]
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise ValueError(f"prompt must be a non-empty string or None (family default), got {prompt!r}")
    chosen_prompt = family.default_prompt if prompt is None else prompt
    settings = validate_generation({**family.default_generation, **generation})
    source = resolve_transformers_spec(name)
    target = resolve_device(device)
    try:
        model_class, processor_class = family.classes()
        processor = processor_class.from_pretrained(source)
        model = model_class.from_pretrained(source)
    except OSError as error:
        raise OSError(
            f"could not load {kind} captioner {name!r} ({error}); offline, pass a local directory saved with "
            "save_pretrained"
        ) from error
    spec = f"{kind}:{name}|prompt={chosen_prompt!r}|" + ",".join(f"{k}={v}" for k, v in sorted(settings.items()))
    return TransformersCaptioner(
        model, CaptionPreprocessor(processor, chosen_prompt), generation=settings, spec=spec, device=target
    )


TINY_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "is", "are", "man", "woman", "child", "dog",
    "cat", "people", "group", "photo", "picture", "face", "smiling", "happy", "sad", "angry",
    "calm", "standing", "sitting", "walking", "holding", "looking", "beach", "street", "park",
    "room", "table", "flowers", "sky", "water", "red", "blue", "green", "dark", "bright", "old",
    "young", "small", "large", "expression", "emotion", "joy", "fear", "surprise", ".", ",", "?",
    "what", "information", "subject", "facial", "body", "movement", "emotional", "meaning", "image",
    "please", "answer", "these", "question", "descriptive", "sentence",
)
"""Real English words for the tiny models' vocabularies, so their (random) captions stay readable;
the KCDP prompt's words are among them, so the prompt tokenizes to its own words."""


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for a reproducible random init without disturbing the caller's RNG stream."""
    import torch

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_image_processor(image_size: int) -> BlipImageProcessor:
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": image_size, "width": image_size})


def _tiny_vision(image_size: int) -> dict[str, int | float]:
    """A 2-layer ViT; the BLIP default init (std 1e-10) would make every image look the same."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 8,
        "initializer_range": 0.02,
    }


def _tiny_bert_tokenizer(extra_special: dict[str, Any]) -> BertTokenizer:
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: index for index, token in enumerate([*specials, *TINY_WORDS])}
    return BertTokenizer(vocab=vocab, **extra_special)


def build_tiny_blip(directory: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random-weight BLIP captioner (model + processor) loadable by `load_captioner`.

    The demo and tests cannot download BLIP, so they use this small model of the same
    architecture; its captions are arbitrary but come from real words.
    """
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    target = Path(directory)
    with _seeded(seed):
        tokenizer = _tiny_bert_tokenizer({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        processor = BlipProcessor(image_processor=_tiny_image_processor(image_size), tokenizer=tokenizer)
        text_config = {
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            # At the default std 0.02 the tiny decoder's cross-attention is too weak to tell images apart.
            "initializer_range": 0.1,
        }
        config = BlipConfig(
            text_config=text_config, vision_config=_tiny_vision(image_size), projection_dim=32,
            image_text_hidden_size=32
        )
        model = BlipForConditionalGeneration(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def build_tiny_instructblip(directory: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random-weight InstructBLIP (Q-Former + T5) captioner loadable by `load_captioner`."""
    from transformers import (
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        T5Config,
        T5Tokenizer,
    )

    target = Path(directory)
    num_query_tokens = 4
    with _seeded(seed):
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        pieces += [(f"\u2581{word}", -float(rank + 1)) for rank, word in enumerate(TINY_WORDS)]
        t5_tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
        qformer_tokenizer = _tiny_bert_tokenizer({})
        processor = InstructBlipProcessor(
            image_processor=_tiny_image_processor(image_size),
            tokenizer=t5_tokenizer,
            qformer_tokenizer=qformer_tokenizer,
            num_query_tokens=num_query_tokens,
        )
        text_config = T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
            decoder_start_token_id=t5_tokenizer.pad_token_id,
        )
        qformer_config = {
            "vocab_size": len(qformer_tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 512,
            "pad_token_id": qformer_tokenizer.pad_token_id,
        }
        config = InstructBlipConfig(
            vision_config=_tiny_vision(image_size),
            qformer_config=qformer_config,
            text_config=text_config.to_dict(),
            num_query_tokens=num_query_tokens,
            image_token_index=t5_tokenizer.convert_tokens_to_ids("<image>"),
        )
        model = InstructBlipForConditionalGeneration(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target

"""Image features of the visual encoder PACL will enhance, behind a content-addressed cache.

The features are those of PACL's evaluation view (the centre `image_size` crop of the square
PACL decodes images to, `models/pacl/augment.py`), read through the pixel cache: the squares
this stage decodes are the ones PACL then trains on when it uses the same encoder and size.

The cluster stage's fingerprint includes K, so a K sweep would re-encode every image if the
features lived in the stage folder. They are cached instead under
`<artifact_root>/cache/features/<key>/part-NNNNN.parquet` (one part per ingest shard), where the
key hashes what determines the features: the encoder spec, the files behind it, the random-init
seed when no pretrained weights are loaded, the code version of this module and everything it
imports, and every ingest shard's (sample_id, image sha256) list. Parts are written atomically
one shard at a time, so an interrupted encoding resumes where it stopped. An image that fails
to load keeps a row with a null feature and the error, so a cache hit reproduces the same
rejects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affectflow.core.atomic import write_json, write_parquet
from affectflow.core.codeversion import code_record
from affectflow.core.columns import vector_column
from affectflow.core.errors import UserError
from affectflow.core.hashing import hash_value
from affectflow.core.progress import Progress
from affectflow.core.store import SAMPLE_ID, SOURCE_ID
from affectflow.models.specs import weights_fingerprint
from affectflow.stages.ingest.stage import IMAGE_PATH, IMAGE_SHA256

if TYPE_CHECKING:
    import torch

    from affectflow.core.pixels import Decoder, PixelTransform

logger = logging.getLogger(__name__)

LISTING_COLUMNS = [SAMPLE_ID, SOURCE_ID, IMAGE_PATH, IMAGE_SHA256]
FEATURE_COLUMN = "image_feature"


@dataclass(frozen=True)
class EncoderSpec:
    """Which visual encoder to run: its spec, whether to load weights, and the init seed."""

    spec: str
    pretrained: bool
    seed: int

    def identity(self) -> dict[str, Any]:
        """Everything that decides the features; the seed matters only for random init."""
        return {"spec": self.spec, "pretrained": self.pretrained,
                "init_seed": None if self.pretrained else self.seed,
                "weights": weights_fingerprint("visual", self.spec)}


class ImageEncoder:
    """The visual backbone in eval mode on its device, returning L2-normalised pooled features."""

    def __init__(self, encoder: EncoderSpec, device: str | None) -> None:
        import torch

        from affectflow.models.encoder_runtime import resolve_device
        from affectflow.models.pacl.augment import ViewConfig
        from affectflow.models.pacl.model import PretrainedWeightsError, build_visual_encoder

        torch.manual_seed(encoder.seed)
        try:
            backbone = build_visual_encoder(encoder.spec, pretrained=encoder.pretrained)
        except (PretrainedWeightsError, FileNotFoundError, ValueError) as error:
            raise UserError(f"cluster.visual_encoder {encoder.spec!r} cannot be loaded: {error}",
                            hint="name local weights in the spec, or set cluster.pretrained=false "
                                 "for a random-init encoder") from error
        self.device = resolve_device(device)
        self.module = backbone.module.to(self.device).eval()
        self.view = ViewConfig(min(backbone.image_size), backbone.mean, backbone.std)
        self.dim = backbone.feature_dim

    def pixels(self, decoder: Decoder = "pil") -> PixelTransform:
        """The cached squares the evaluation view is cut from."""
        from affectflow.models.pacl.augment import square_pixels

        return square_pixels(self.view.image_size, decoder)

    def encode(self, squares: torch.Tensor) -> np.ndarray:
        """L2-normalised features of the evaluation views of uint8 squares."""
        import torch.nn.functional as F

        from affectflow.models.encoder_runtime import inference_context
        from affectflow.models.pacl.augment import eval_views

        pixels = eval_views(squares.to(self.device, non_blocking=True), self.view)
        with inference_context(self.device):
            features = self.module(pixels)
        return F.normalize(features.float(), dim=-1).cpu().numpy()


def listing_hash(listing: dict[int, pa.Table]) -> str:
    """Hash of every shard's ordered (sample_id, image sha256) pairs: the images' content."""
    return hash_value([[shard_id, table[SAMPLE_ID].to_pylist(),
                        table[IMAGE_SHA256].to_pylist()]
                       for shard_id, table in sorted(listing.items())])


@dataclass(frozen=True)
class FeatureCache:
    """One cache folder: `part-NNNNN.parquet` per ingest shard with sample_id, feature, error."""

    folder: Path

    @classmethod
    def for_images(cls, artifact_root: Path, encoder: EncoderSpec,
                   listing: dict[int, pa.Table]) -> FeatureCache:
        key = hash_value({"encoder": encoder.identity(), "code": code_record(__name__)["version"],
                          "images": listing_hash(listing)})
        return cls(artifact_root / "cache" / "features" / key)

    @property
    def key(self) -> str:
        return self.folder.name

    def part(self, shard_id: int) -> Path:
        return self.folder / f"part-{shard_id:05d}.parquet"

    def missing(self, shard_ids: list[int]) -> list[int]:
        return [shard_id for shard_id in shard_ids if not self.part(shard_id).is_file()]

    def read(self, shard_id: int) -> pa.Table:
        path = self.part(shard_id)
        if not path.is_file():
            raise UserError(f"feature cache part {path} disappeared during the run",
                            hint="rerun the cluster stage with --force to encode it again")
        return pq.read_table(path)

    def write(self, shard_id: int, table: pa.Table) -> None:
        write_parquet(self.part(shard_id), table)


def feature_part(sample_ids: list[str], vectors: dict[int, np.ndarray],
                 errors: dict[int, str], dim: int) -> pa.Table:
    """One shard's cache part: a float16 feature per loaded image, null plus error otherwise."""
    values = np.zeros((len(sample_ids), dim), dtype=np.float16)
    for index, vector in vectors.items():
        values[index] = vector
    missing = np.array([index not in vectors for index in range(len(sample_ids))], dtype=bool)
    return pa.table({SAMPLE_ID: pa.array(sample_ids, pa.string()),
                     FEATURE_COLUMN: vector_column(values, missing=missing),
                     "error": pa.array([errors.get(i) for i in range(len(sample_ids))],
                                       pa.string())})


def ensure_image_features(cache: FeatureCache, encoder_spec: EncoderSpec,
                          listing: dict[int, pa.Table], batch_size: int, settings: Any,
                          device: str | None) -> int:
    """Encode the shards the cache lacks (loading the encoder only then); return images encoded."""
    from affectflow.core.loading import PixelRequest, pixel_batches
    from affectflow.stages.batching import jpeg_decoder, pixel_store

    missing = cache.missing(sorted(listing))
    if not missing:
        logger.info("cluster: image features reused from cache %s", cache.key[:16])
        return 0
    encoder = ImageEncoder(encoder_spec, device)
    write_json(cache.folder / "info.json", {"encoder": encoder_spec.identity(), "dim": encoder.dim})
    total = sum(listing[shard_id].num_rows for shard_id in missing)
    logger.info("cluster: encoding %d images of %d shards with %s (cache %s)", total,
                len(missing), encoder_spec.spec, cache.key[:16])
    progress = Progress("cluster image features", total=total, unit="images")
    store = pixel_store(settings, encoder.pixels(jpeg_decoder(settings, encoder.device)))
    for shard_id in missing:
        rows = listing[shard_id]
        vectors: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        requests = [PixelRequest(path, sha) for path, sha in
                    zip(rows[IMAGE_PATH].to_pylist(), rows[IMAGE_SHA256].to_pylist())]
        for batch in pixel_batches(requests, batch_size, store, settings.workers, encoder.device):
            errors.update(batch.failures)
            if batch.stacked is not None:
                vectors.update(zip(batch.indices, encoder.encode(batch.stacked)))
            progress.advance(len(batch.indices) + len(batch.failures))
        cache.write(shard_id, feature_part(rows[SAMPLE_ID].to_pylist(), vectors, errors,
                                           encoder.dim))
    progress.close()
    return total

"""faiss k-means on every point: spherical for normalised features, seeded, GPU when present.

`faiss.Kmeans` trains on at most `max_points_per_centroid` (256) points per centroid and
samples the rest away; PACL's pseudo-labels must come from all posts, so the limit is raised to
cover every point. Its `min_points_per_centroid` warning (printed by C++ for small inputs) is
turned off: cluster sizes are reported instead. The objective is reported as the sum of squared
Euclidean distances to the assigned centroids, computed here the same way for any solution, so
the factual and emotional sides and other k-means implementations compare on one scale.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

FAISS_DEFAULT_MAX_POINTS_PER_CENTROID = 256
_DISTANCE_CHUNK = 65_536
Init = Literal["kmeans++", "random"]


@dataclass(frozen=True)
class KmeansResult:
    """Labels of every point, the centroids, the objective and the cluster sizes."""

    labels: np.ndarray
    centroids: np.ndarray
    inertia: float
    sizes: list[int]
    seconds: float


def faiss_uses_gpu() -> bool:
    """True when this faiss build has GPU support and sees a GPU (faiss-cpu always reports 0)."""
    import faiss

    return faiss.get_num_gpus() > 0


def kmeans_plus_plus_available() -> bool:
    """faiss >= 1.14 seeds k-means with k-means++ (`ClusteringInitMethod_KMEANS_PLUS_PLUS`)."""
    import faiss

    return hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS")


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (what faiss expects)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def sum_squared_distances(points: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """k-means objective of a labelling: sum of ||x - c_label||^2 over all points (float64)."""
    total = 0.0
    for start in range(0, len(points), _DISTANCE_CHUNK):
        chunk = points[start:start + _DISTANCE_CHUNK].astype(np.float64)
        assigned = centroids[labels[start:start + len(chunk)]].astype(np.float64)
        total += float(((chunk - assigned) ** 2).sum())
    return total


def kmeans(points: np.ndarray, k: int, niter: int, seed: int, spherical: bool = True,
           init: Init = "kmeans++", nredo: int = 1, init_centroids: np.ndarray | None = None,
           label: str = "k-means") -> KmeansResult:
    """Cluster all `points` (n, d) into `k` clusters with `niter` Lloyd iterations.

    With `spherical=True` the points should be L2-normalised; centroids are then renormalised
    after each iteration and assignment is by inner product (cosine). `init` picks the initial
    centroids (k-means++ D²-sampling or uniformly random points); `nredo` restarts keep the
    best objective. The same seed and input give the same labels. `init_centroids` (k, d)
    replaces the initialisation altogether.
    """
    import faiss

    points = np.ascontiguousarray(points, dtype=np.float32)
    count, dim = points.shape
    if not 1 <= k <= count:
        raise ValueError(f"{label}: k={k} needs 1 <= k <= number of points ({count})")
    points_per_centroid = math.ceil(count / k)
    if points_per_centroid > FAISS_DEFAULT_MAX_POINTS_PER_CENTROID:
        logger.info("%s k=%d: faiss would train on a sample of %d of %d points by default; "
                    "max_points_per_centroid raised to %d so every point is used", label, k,
                    k * FAISS_DEFAULT_MAX_POINTS_PER_CENTROID, count, points_per_centroid)
    use_gpu = faiss_uses_gpu()
    start = time.perf_counter()
    init_options = {"init_method": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS} \
        if init == "kmeans++" else {}
    model = faiss.Kmeans(dim, k, niter=niter, seed=seed, spherical=spherical, nredo=nredo,
                         max_points_per_centroid=points_per_centroid, min_points_per_centroid=1,
                         gpu=use_gpu, verbose=False, **init_options)
    model.train(points, init_centroids=init_centroids)
    _, assigned = model.assign(points)
    labels = assigned.astype(np.int32)
    centroids = np.asarray(model.centroids, dtype=np.float32)
    seconds = time.perf_counter() - start
    inertia = sum_squared_distances(points, centroids, labels)
    sizes = np.bincount(labels, minlength=k).tolist()
    logger.info("%s k=%d: %d x %d points on %s in %.2fs, inertia %.4g, sizes %s", label, k,
                count, dim, "GPU" if use_gpu else "CPU", seconds, inertia, sizes)
    return KmeansResult(labels, centroids, inertia, sizes, seconds)

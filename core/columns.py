"""Artifact column formats shared by every stage: vectors as fixed-size lists, narrow reads.

Embeddings are stored as fixed-size-list columns (float16 by default: half the bytes, and
cosines survive), one row per sample, so a side table is plain Parquet any tool can read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from affectflow.core.store import SAMPLE_ID


def vector_column(vectors: np.ndarray, dtype: type[np.floating] = np.float16,
                  missing: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(n, d) array -> fixed-size-list column of `dtype`; rows where `missing` is True are null.

    An (n, d1, d2, ...) array (a matrix per row, e.g. token-level text features) nests one
    fixed-size list per extra axis, so the shape travels with the column."""
    arrow_type = pa.from_numpy_dtype(np.dtype(dtype))
    column: pa.Array = pa.array(np.ascontiguousarray(vectors, dtype=dtype).reshape(-1), type=arrow_type)
    for size in reversed(vectors.shape[2:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    mask = None if missing is None else pa.array(missing, pa.bool_())
    return pa.FixedSizeListArray.from_arrays(column, vectors.shape[1], mask=mask)


def column_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Inverse of `vector_column`, as float32 (n, d) or (n, d1, d2, ...)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    shape = []
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, *shape)


def keyed_column(table: pa.Table, column: str, key: str = SAMPLE_ID) -> dict[Any, Any]:
    """`key` -> `column` of a table (e.g. one shard's captions by sample_id)."""
    return dict(zip(table[key].to_pylist(), table[column].to_pylist()))


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    """A few columns of one small shard file; single-threaded ParquetFile reads are several times
    faster than `pq.read_table` on files this size, and shards are read thousands of times."""
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)

"""Message files: the on-disk form of a Kafka log of raw events.

Two formats, chosen by extension:

* ``.jsonl`` — one message per line, the exact message bytes (generator output never contains a newline
  inside a message);
* ``.parquet`` — columns ``key`` (string, the Kafka key, null when unknown) and ``value``
  (binary, the exact message bytes), in log order. Read back, a ``value`` of type string stands for its
  UTF-8 bytes and a null ``value`` (a Kafka tombstone, as exports of a topic keep it) for empty bytes, which
  is what the stream worker makes of a tombstone (a ``malformed_json`` dead letter).

Both keep malformed and oversized messages byte-for-byte, so a file can be replayed into Kafka
(``fstore publish``) or ingested (``fstore ingest``) with identical results.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.binary(), nullable=False)])


class MessageFileError(ValueError):
    """A file that is not a message file: another extension, or a Parquet file without a ``value`` column of
    bytes or text."""


def file_format(path: str | Path) -> str:
    """``jsonl`` or ``parquet`` from the file name.

    Raises:
        MessageFileError: for any other extension.
    """
    name = str(path).lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise MessageFileError(f"{path}: unknown message file format (use .jsonl or .parquet)")


_VALUE_TYPES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string)


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """A Parquet message file, opened.

    Raises:
        MessageFileError: it has no ``value`` column of bytes or text.
    """
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    kind = pf.schema_arrow.field("value").type if "value" in names else None
    if kind is None or not any(ok(kind) for ok in _VALUE_TYPES):
        raise MessageFileError(
            f"{path}: a Parquet message file needs a column 'value' of binary or string (the message bytes); "
            f"found {'no such column' if kind is None else kind}"
        )
    return pf


def count_messages(path: str | Path) -> int:
    """Number of messages in a file (cheap for Parquet: read from the footer).

    Raises:
        MessageFileError: not a message file (:func:`file_format`, :func:`parquet_file`).
    """
    if file_format(path) == "parquet":
        return int(parquet_file(path).metadata.num_rows)
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def iter_batches(path: str | Path, batch_size: int = 100_000) -> Iterator[list[bytes]]:
    """Yield the messages of a file in log order, ``batch_size`` at a time.

    Blank JSONL lines are skipped (they are not messages); a trailing ``\\r`` is removed. Parquet values:
    see :func:`parquet_values`.

    Raises:
        MessageFileError: not a message file (before any batch).
    """
    if file_format(path) == "parquet":
        pf = parquet_file(path)
        for rb in pf.iter_batches(batch_size=batch_size, columns=["value"]):
            yield parquet_values(rb.column(0))
        return
    batch: list[bytes] = []
    with open(path, "rb") as fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            batch.append(line)
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def parquet_values(column: pa.Array) -> list[bytes]:
    """The messages of a Parquet ``value`` column: text as its UTF-8 bytes, a null (a tombstone) as empty bytes
    — as the stream worker reads a tombstone — so that ``fstore ingest`` dead-letters it as
    ``malformed_json`` instead of failing on it."""
    if pa.types.is_string(column.type):
        column = column.cast(pa.binary())
    elif pa.types.is_large_string(column.type):
        column = column.cast(pa.large_binary())
    values: list[bytes] = column.to_pylist()
    if column.null_count:
        values = [b"" if v is None else v for v in values]
    return values


class MessageWriter:
    """Append messages to a JSONL or Parquet file (one row group per :meth:`write` call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = file_format(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pq: pq.ParquetWriter | None = None
        self._fh = open(self.path, "wb") if self.format == "jsonl" else None  # noqa: SIM115
        if self.format == "parquet":
            self._pq = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")

    def write(self, keys: list[str | None], values: list[bytes]) -> None:
        """Append one batch of messages with their keys."""
        if self._fh is not None:
            self._fh.write(b"\n".join(values) + b"\n" if values else b"")
        elif self._pq is not None:
            self._pq.write_table(pa.table({"key": keys, "value": values}, schema=SCHEMA))

    def close(self) -> None:
        """Flush and close the file."""
        if self._fh is not None:
            self._fh.close()
        if self._pq is not None:
            self._pq.close()

    def __enter__(self) -> MessageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

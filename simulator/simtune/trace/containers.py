"""Opening a trace file as an Arrow table: CSV, Parquet or JSON lines (optionally .gz).

Why a separate layer: the *container* (how bytes are laid out) is independent of the
*format* (what the columns mean: Azure LLM, Mooncake, count traces ...). Sniffing here
lets `--trace-format auto` work on files with odd extensions, and rejects empty and
binary files with one line instead of an Arrow stack trace.

Why pyarrow: its CSV and JSON readers are multi-threaded C++ that produce columns
directly, so no per-row Python object is ever created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from simtune.errors import InputError

CONTAINERS = ("csv", "parquet", "jsonl")

_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_SNIFF_BYTES = 8192


def _suffix(path: Path) -> str:
    """The meaningful extension, looking through a trailing .gz/.bz2/.zst."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _head(path: Path) -> bytes:
    """First bytes of the (decompressed) file, for sniffing."""
    try:
        with pa.input_stream(str(path), compression="detect") as fh:
            return fh.read(_SNIFF_BYTES)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: cannot read: {_first_line(exc)}") from None


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sniff boundary is not evidence of binary.
        return exc.start < len(head) - 4
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def detect_container(path: Path) -> str:
    """`csv`, `parquet` or `jsonl`, from magic bytes first, then the extension."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        return "parquet"
    by_suffix = _SUFFIXES.get(_suffix(path))
    if by_suffix == "parquet":
        raise InputError(f"{path}: not a Parquet file (no PAR1 magic bytes)")
    head = _head(path)
    if _looks_binary(head):
        raise InputError(f"{path}: looks like a binary file, not a CSV, JSON-lines or Parquet trace")
    if by_suffix:
        return by_suffix
    return "jsonl" if head.lstrip().startswith(b"{") else "csv"


def read_table(path: str | Path, container: Optional[str] = None) -> pa.Table:
    """Read a whole file into an Arrow table; every failure is a one-line InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a trace file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes)")
    if container is None:
        container = detect_container(path)
    elif container not in CONTAINERS:
        raise InputError(f"{path}: unknown container {container!r} (expected one of {', '.join(CONTAINERS)})")
    try:
        if container == "parquet":
            table = pq.read_table(path)
        elif container == "jsonl":
            table = _flatten_nested(pajson.read_json(path))
        else:
            parse = pacsv.ParseOptions(delimiter="\t") if _suffix(path) == ".tsv" else None
            table = pacsv.read_csv(path, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as {container}: {_first_line(exc)}") from None
    if table.num_columns == 0:
        raise InputError(f"{path}: no columns found")
    return table


def _flatten_nested(table: pa.Table) -> pa.Table:
    """Structs become `a.b` columns; lists of scalars become space-separated strings.

    Why strings: the shared Mooncake CSV stores `hash_ids` that way, so the JSON-lines
    original and the CSV copy load to the same columns.
    """
    table = table.flatten()
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            as_text = pc.cast(table.column(i), pa.list_(pa.string()))
            table = table.set_column(i, field.name, pc.binary_join(as_text, " "))
    return table

"""A log file's records: its bytes un-gzipped and decoded as they are read, then split into JSON records (JSON Lines,
or a JSON document), or a Parquet file's rows. An item that cannot be read carries the reason it is quarantined with,
and the items around it go on. Files are streamed in chunks, so memory does not grow with a file's size; a JSON
document (.json) is the exception, parsed whole.

A file is UTF-8 unless it starts with a byte-order mark (UTF-8, UTF-16 or UTF-32). Nothing else is guessed: a
legacy 8-bit decoding accepts any bytes, so binary junk would pass for text. Bytes that do not decode are kept as
markers, so only the records that contain them are quarantined, not the whole file.
"""

import codecs
import contextlib
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import msgspec

from tao_dagster.traces.otel import otlp_spans

RAW_EXCERPT_CHARS = 2000
CHUNK_BYTES = 1 << 20  # read (and un-gzipped) at a time
CSV_FIELD_LIMIT = 2**31 - 1  # no field is too long for csv (its own limit is 128 KiB): the length limit decides
# UTF-32 first: its little-endian mark starts with UTF-16's.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
UNDECODABLE = re.compile("[\udc00-\udcff]")  # what `_mark_undecodable` leaves for a byte that does not decode
# The line breaks bytes.splitlines knows (a text stream's with newline=""): str.splitlines also breaks at U+2028 and
# others, which JSON strings may hold.
LINE_BREAK = re.compile("\r\n|\r|\n")
SPACE = re.compile(r"[ \t\r\n]*")


class FileProblem(ValueError):
    """The whole file cannot be used; it becomes one bad row at line 0."""


@dataclass
class Item:
    """A record of a file, or what stands where one could not be read (`error` says why)."""

    number: int  # the line it starts on, or its place in the file (see `Numbering`)
    raw: str
    value: object = None
    error: str | None = None


def _mark_undecodable(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode error handler: each undecodable byte becomes a lone surrogate, as with `surrogateescape`,
    but for any byte and any encoding (UTF-16 included), so decoding never fails as a whole."""
    return "".join(chr(0xDC00 + byte) for byte in err.object[err.start : err.end]), err.end


codecs.register_error("tao-mark-undecodable", _mark_undecodable)


def excerpt(text: str) -> str:
    """The start of a bad record as storable text: undecodable bytes shown as \\xNN."""
    return UNDECODABLE.sub(lambda byte: f"\\x{ord(byte[0]) - 0xDC00:02x}", text[:RAW_EXCERPT_CHARS])


def gunzip(compressed: BinaryIO) -> Iterator[bytes]:
    """Every member of a gzip stream (rotated logs may be concatenated), chunk by chunk. A file cut short, one still
    being written, gives what was compressed before the cut, so only its last record is lost."""
    member = zlib.decompressobj(zlib.MAX_WBITS | 16)
    while data := compressed.read(CHUNK_BYTES):
        while data:
            try:
                yield member.decompress(data)
            except zlib.error as err:
                raise FileProblem(f"not valid gzip data: {err}") from err
            data = member.unused_data if member.eof else b""
            member = zlib.decompressobj(zlib.MAX_WBITS | 16) if member.eof else member


class _ChunkReader(io.RawIOBase):
    """A binary stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks, self.rest = (chunk for chunk in chunks if chunk), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        filled = 0
        while filled < len(buffer):
            if not self.rest:
                self.rest = memoryview(next(self.chunks, None) or b"")
                if not self.rest:
                    break
            n = min(len(buffer) - filled, len(self.rest))
            buffer[filled : filled + n], self.rest = self.rest[:n], self.rest[n:]
            filled += n
        return filled


@contextlib.contextmanager
def open_text(path: Path) -> Iterator[tuple[TextIO, str]]:
    """The file's text as a stream, un-gzipped for a .gz name, and the name of its encoding, chosen by byte-order
    mark, UTF-8 without one. Lines end at \\n, \\r\\n or \\r (newline=""), kept on each line."""
    with path.open("rb") as raw:
        binary = io.BufferedReader(_ChunkReader(gunzip(raw)), CHUNK_BYTES) if path.name.lower().endswith(".gz") else raw
        head = binary.peek(4)[:4]
        encoding = next((name for mark, name in BYTE_ORDER_MARKS if head.startswith(mark)), "utf-8")
        yield io.TextIOWrapper(binary, encoding, errors="tao-mark-undecodable", newline=""), encoding.removesuffix("-sig").upper()


def json_value(raw: str, encoding: str) -> object:
    """The JSON value of one record's text; ValueError when it does not decode or parse. msgspec reads it several
    times faster than json; what msgspec refuses (a lone surrogate escape, NaN, deep nesting, a bad line) is read by json, so that
    values and reasons are json's."""
    if UNDECODABLE.search(raw):
        raise ValueError(f"line is not valid {encoding}")
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed JSON: {err.msg}") from err
    except RecursionError as err:
        raise ValueError("JSON nested too deeply") from err


def json_lines(text: Iterable[str], encoding: str) -> Iterator[Item]:
    """One record per line of a stream whose lines keep their line break; blank lines are none."""
    for line, raw in enumerate(text, start=1):
        record = raw.rstrip("\r\n")
        if not record.strip():
            continue
        try:
            yield Item(line, record, json_value(record, encoding))
        except ValueError as err:
            # Only a last line can lack its line break: it may be a line still being written.
            cut_short = " (no newline at the end: the file may have been cut short)" if record == raw else ""
            yield Item(line, record, error=f"{err}{cut_short}")


def json_document(text: str, encoding: str) -> list[Item]:
    """A .json file's records: JSON Lines when its first line is a JSON value of its own; else the elements of a
    top-level array, or a sequence of values (the pretty-printed spans ConsoleSpanExporter writes one after another).
    A syntax error there ends the records: the rest of the file is one bad item."""
    if not text.strip():
        return []
    first = next(line for line in LINE_BREAK.split(text) if line.strip())
    if not first.lstrip().startswith("["):
        try:
            json.loads(first)
            return list(json_lines(io.StringIO(text, newline=""), encoding))
        except (json.JSONDecodeError, RecursionError):
            pass
    decoder, items, lines = json.JSONDecoder(), [], _LineCounter(text)
    pos = SPACE.match(text).end()
    array = text.startswith("[", pos)
    pos = SPACE.match(text, pos + 1).end() if array else pos
    while pos < len(text) and not (array and text.startswith("]", pos)):
        try:
            value, end = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as err:
            broken = UNDECODABLE.search(text, pos)
            why = f"not valid {encoding}" if broken else f"malformed JSON: {getattr(err, 'msg', 'nested too deeply')}"
            return [*items, Item(lines.at(pos), text[pos:], error=f"{why} (the rest of the file is not read)")]
        raw = text[pos:end]
        items.append(Item(lines.at(pos), raw, value, f"record is not valid {encoding}" if UNDECODABLE.search(raw) else None))
        pos = SPACE.match(text, end).end()
        if array and text.startswith(",", pos):
            pos = SPACE.match(text, pos + 1).end()
        elif array and pos < len(text) and not text.startswith("]", pos):
            return [*items, Item(lines.at(pos), text[pos:], error="malformed JSON array: ',' or ']' expected (the rest is not read)")]
    if array and SPACE.match(text, pos + 1).end() < len(text):
        items.append(Item(lines.at(pos + 1), text[pos + 1 :], error="text after the end of the JSON array"))
    return items


class _LineCounter:
    """Line numbers of increasing positions in a text, counted once."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def parquet_rows(source: BinaryIO, batch_size: int) -> Iterator[Item]:
    """A Parquet file's rows as records, numbered from 1, read `batch_size` rows at a time; JSON text in a column is
    read by the format's reader."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(source).iter_batches(batch_size):
            for row in batch.to_pylist():
                number += 1
                yield Item(number, json.dumps(row, default=str), row)
    except (pa.ArrowException, OSError) as err:
        raise FileProblem(f"not a readable Parquet file: {err}") from err


def records_of(value: object) -> list[object]:
    """The records one JSON value holds: an OTLP export's spans, a Langfuse API page's observations, or itself."""
    if isinstance(value, dict) and "resourceSpans" in value:
        return otlp_spans(value)
    if isinstance(value, dict) and isinstance(value.get("data"), list) and "meta" in value:
        return value["data"]
    return [value]


def records(items: Iterable[Item]) -> list[Item]:
    """The records the items hold, each numbered by the item it comes from (see `Numbering`)."""
    out = []
    for item in items:
        try:
            values = [item.value] if item.error else records_of(item.value)
        except ValueError as err:
            out.append(Item(item.number, item.raw, error=str(err)))
            continue
        alone = len(values) == 1 and values[0] is item.value
        out += [item] if alone else [Item(item.number, json.dumps(v, default=str), v) for v in values]
    return out


class Numbering:
    """Numbers a file's records batch by batch, so that rows, keyed by file and number, are unique: by the line
    each starts on while those numbers are unique, else by place (a one-line JSON array, an OTLP export of several
    spans a line). From the first batch with a line of several records on, records are numbered by place, counted
    on from the highest number given before: a file read in one batch is numbered by place from 1."""

    def __init__(self):
        self.by_place, self.last = False, 0

    def __call__(self, batch: list[Item]) -> list[Item]:
        self.by_place = self.by_place or len({item.number for item in batch}) < len(batch)
        if self.by_place:
            for number, item in enumerate(batch, start=self.last + 1):
                item.number = number
        self.last = max(self.last, batch[-1].number) if batch else self.last
        return batch

"""Parse production log files into prompts, keeping every bad row with its reason.

A log file is JSONL (`{"messages": [...]}` or `{"prompt": "..."}` per line) or CSV with a text column.
Each accepted row becomes a chat message list; its prompt id is a hash of the normalised messages, so
the same prompt arriving in two files collapses to one prompt. Only roles and contents are read: any
other field (a label, say) never leaves this module.

A file is UTF-8 unless it starts with a byte-order mark (UTF-8, UTF-16 or UTF-32). Nothing else is
guessed: a legacy 8-bit decoding accepts any bytes, so binary junk would pass for text. Bytes that do
not decode are kept as markers, so only the rows that contain them are quarantined, not the whole file.
"""

import codecs
import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

ROLES = ("system", "user", "assistant")
LOG_SUFFIXES = (".jsonl", ".json", ".csv")
LongPrompts = Literal["skip", "truncate"]
RAW_EXCERPT_CHARS = 2000
# UTF-32 first: its little-endian mark starts with UTF-16's.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
UNDECODABLE = re.compile("[\udc00-\udcff]")  # what `_mark_undecodable` leaves for a byte that does not decode
SURROGATE = re.compile("[\ud800-\udfff]")
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 and DEL, except tab and line breaks
# The line breaks bytes.splitlines knows: str.splitlines also breaks at U+2028 and others, which JSON strings may hold.
LINE_BREAK = re.compile("\r\n|\r|\n")


def _mark_undecodable(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode error handler: each undecodable byte becomes a lone surrogate, as with `surrogateescape`,
    but for any byte and any encoding (UTF-16 included), so decoding never fails as a whole."""
    return "".join(chr(0xDC00 + byte) for byte in err.object[err.start : err.end]), err.end


codecs.register_error("tao-mark-undecodable", _mark_undecodable)


@dataclass
class ParsedRow:
    line: int
    messages: list[dict]
    truncated: bool = False


@dataclass
class BadRow:
    line: int  # 0 for a problem with the whole file
    reason: str
    raw: str


@dataclass
class ParsedFile:
    path: Path
    rows: list[ParsedRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.bad)


class FileProblem(ValueError):
    """The whole file cannot be used; it becomes one bad row at line 0."""


def normalise_text(text: str) -> str:
    """Collapse whitespace so that trivially different copies of a prompt hash alike."""
    return " ".join(text.split())


def prompt_id(messages: list[dict]) -> str:
    canonical = json.dumps([[m["role"], normalise_text(m["content"])] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_heldout(pid: str, fraction: float) -> bool:
    """Deterministic evaluation-only slice: the same prompt is held out in every run and every file."""
    return int(pid[:8], 16) / 0xFFFFFFFF < fraction


HELDOUT_PARTS = ("gate", "test")


def heldout_part(pid: str) -> str:
    """Which half of the held-out slice a prompt is in, by hash bits independent of is_heldout's: `gate`
    (validation, read by promotion decisions) or `test` (read by the report alone, so no decision can flatter it)."""
    return HELDOUT_PARTS[int(pid[8:16], 16) % 2]


def _decode(data: bytes) -> tuple[str, str]:
    """The file's text and the name of its encoding, chosen by byte-order mark, UTF-8 without one."""
    encoding = next((name for mark, name in BYTE_ORDER_MARKS if data.startswith(mark)), "utf-8")
    return data.decode(encoding, errors="tao-mark-undecodable"), encoding.removesuffix("-sig").upper()


def _excerpt(text: str) -> str:
    """The start of a bad row as storable text: undecodable bytes shown as \\xNN."""
    return UNDECODABLE.sub(lambda byte: f"\\x{ord(byte[0]) - 0xDC00:02x}", text[:RAW_EXCERPT_CHARS])


def _json_record(raw: str, encoding: str) -> object:
    """The line's JSON value; ValueError when the line does not decode or parse."""
    if UNDECODABLE.search(raw):
        raise ValueError(f"line is not valid {encoding}")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed JSON: {err.msg}") from err
    except RecursionError as err:
        raise ValueError("JSON nested too deeply") from err


def _messages_from_record(record: object) -> list[dict]:
    if not isinstance(record, dict):
        raise ValueError("line is not a JSON object")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' is not a non-empty list")
        out = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise ValueError("a message lacks a string 'content'")
            if m.get("role") not in ROLES:
                raise ValueError(f"unknown message role {m.get('role')!r}")
            out.append({"role": m["role"], "content": m["content"]})
        # A logged conversation may end with the assistant's answer: the prompt is everything before it.
        while out and out[-1]["role"] == "assistant":
            out.pop()
        if not out or out[-1]["role"] != "user":
            raise ValueError("conversation has no user turn to answer")
        return out
    if "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise ValueError("'prompt' is not a string")
        return [{"role": "user", "content": record["prompt"]}]
    raise ValueError("object has neither 'messages' nor 'prompt'")


def _accept(line: int, messages: list[dict], max_chars: int, long_prompts: LongPrompts) -> ParsedRow:
    """The row if it can be used, cut to `max_chars` when `long_prompts` is "truncate"; else ValueError."""
    for m in messages:
        if SURROGATE.search(m["content"]):
            raise ValueError("text has an unpaired surrogate escape (not valid Unicode)")
        if CONTROL_CHARS.search(m["content"]):
            raise ValueError("text contains control characters (binary data?)")
    prompt = messages[-1]["content"]
    if not normalise_text(prompt):
        raise ValueError("empty prompt")
    excess = sum(len(m["content"]) for m in messages) - max_chars
    if excess <= 0:
        return ParsedRow(line, messages)
    if long_prompts == "skip":
        raise ValueError(f"prompt has {max_chars + excess} characters, over the limit of {max_chars}")
    kept = prompt[: max(len(prompt) - excess, 0)]
    if not normalise_text(kept):
        raise ValueError(f"earlier turns leave no room for the prompt within the limit of {max_chars} characters")
    return ParsedRow(line, [*messages[:-1], {"role": "user", "content": kept}], truncated=True)


def _read_jsonl(parsed: ParsedFile, text: str, encoding: str, max_chars: int, long_prompts: LongPrompts) -> None:
    lines = LINE_BREAK.split(text)
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = _json_record(raw, encoding)
        except ValueError as err:
            # Only a last line can lack its newline: it may be a line still being written.
            cut_short = " (no newline at the end: the file may have been cut short)" if line == len(lines) else ""
            parsed.bad.append(BadRow(line, f"{err}{cut_short}", _excerpt(raw)))
            continue
        try:
            parsed.rows.append(_accept(line, _messages_from_record(record), max_chars, long_prompts))
        except ValueError as err:
            parsed.bad.append(BadRow(line, str(err), _excerpt(raw)))


def _read_csv(parsed: ParsedFile, text: str, encoding: str, text_column: str, max_chars: int, long_prompts: LongPrompts) -> None:
    # The length limit decides about long prompts, not csv's field limit: no field is longer than the file.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    # strict: an unterminated quote (a file cut short) is an error, not a field that runs to the end.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        columns = next(reader)
    except csv.Error as err:
        raise FileProblem(f"CSV header is malformed: {err}") from err
    if text_column not in columns:
        raise FileProblem(f"CSV has no column {text_column!r} (columns: {columns})")
    column = columns.index(text_column)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            parsed.bad.append(BadRow(reader.line_num, f"malformed CSV: {err}", ""))
            continue
        if not record:  # a blank line
            continue
        raw = record[column] if column < len(record) else ""
        try:
            if UNDECODABLE.search(raw):
                raise ValueError(f"text is not valid {encoding}")
            parsed.rows.append(_accept(reader.line_num, [{"role": "user", "content": raw}], max_chars, long_prompts))
        except ValueError as err:
            parsed.bad.append(BadRow(reader.line_num, str(err), _excerpt(raw)))


def parse_log_file(path: Path, text_column: str = "text", max_chars: int = 4000, long_prompts: LongPrompts = "skip") -> ParsedFile:
    """Read one log file; rows that cannot be used are returned in `bad` with line and reason.

    A problem with the whole file (unreadable, gone since it was listed, a CSV without the text
    column) is one bad row at line 0, so that one broken file does not stop the others. An empty file
    is a file with no rows. A prompt over `max_chars` is quarantined ("skip") or cut ("truncate").
    """
    if long_prompts not in get_args(LongPrompts):
        raise ValueError(f"long_prompts must be one of {get_args(LongPrompts)}, not {long_prompts!r}")
    parsed = ParsedFile(path)
    text = ""
    try:
        suffix = path.suffix.lower()
        if suffix not in LOG_SUFFIXES:
            raise FileProblem(f"unsupported log format {suffix!r} (expected .jsonl or .csv)")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise FileProblem(f"file could not be read: {err.strerror or err}") from err
        text, encoding = _decode(data)
        if not text.strip():
            return parsed
        if suffix == ".csv":
            _read_csv(parsed, text, encoding, text_column, max_chars, long_prompts)
        else:
            _read_jsonl(parsed, text, encoding, max_chars, long_prompts)
    except FileProblem as err:
        parsed.bad.append(BadRow(0, str(err), _excerpt(text)))
    return parsed

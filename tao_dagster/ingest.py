"""Parse production log files into prompts, keeping every bad row with its reason.

A log file is JSON Lines, JSON, CSV with a text column, or Parquet, any of them gzipped (`.jsonl.gz`); its records
are read by the reader of its log format (tao_dagster.traces), chosen by the `log_format` setting or from the
file's first records. Each accepted record becomes a prompt conversation, with its tool definitions and what the
log says of the call (the reply, the model, request id and time); its prompt id is a hash of the normalised
messages, so the same prompt arriving in two files collapses to one prompt. What a reader does not keep (a label,
say) never leaves this module.
"""

import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO, get_args

from tao_dagster.traces import DETECT_RECORDS, FORMATS, LogFormatName, Trace, detect, files, last_user_turn, read_trace
from tao_dagster.traces.files import UNDECODABLE, FileProblem, Item, Numbering, excerpt

LOG_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # each also gzipped, with .gz after it
LongPrompts = Literal["skip", "truncate"]
SURROGATE = re.compile("[\ud800-\udfff]")
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 and DEL, except tab and line breaks
BATCH_RECORDS = 10_000  # records read, checked and stored at a time: what memory holds of a file


@dataclass
class ParsedRow:
    line: int
    trace: Trace
    truncated: bool = False

    @property
    def messages(self) -> list[dict]:
        return self.trace.messages


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
    log_format: str = ""  # the reader that read its records
    skipped: int = 0  # records of no model call (an HTTP span, a Langfuse SPAN): not rows

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.bad)


def log_suffix(name: str) -> str | None:
    """The log suffix of a file name (`.jsonl` for `x.jsonl` and `x.jsonl.gz`), None for a file that is no log."""
    name = name.lower().removesuffix(".gz")
    return next((suffix for suffix in LOG_SUFFIXES if name.endswith(suffix)), None)


def normalise_text(text: str) -> str:
    """Collapse whitespace so that trivially different copies of a prompt hash alike."""
    return " ".join(text.split())


def prompt_id(messages: list[dict], tools: list[dict] | None = None) -> str:
    """The hash of the normalised turns, with their tool calls (not their ids, which differ per request) and the tool
    definitions where there are any."""
    turns = [[m["role"], normalise_text(m["content"]), *_calls(m)] for m in messages]
    canonical = json.dumps({"messages": turns, "tools": tools} if tools else turns, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _calls(message: dict) -> list:
    calls = message.get("tool_calls")
    return [[[c["function"]["name"], c["function"]["arguments"]] for c in calls]] if calls else []


def is_heldout(pid: str, fraction: float) -> bool:
    """Deterministic evaluation-only slice: the same prompt is held out in every run and every file."""
    return int(pid[:8], 16) / 0xFFFFFFFF < fraction


HELDOUT_PARTS = ("gate", "test")


def heldout_part(pid: str) -> str:
    """Which half of the held-out slice a prompt is in, by hash bits independent of is_heldout's: `gate`
    (validation, read by promotion decisions) or `test` (read by the report alone, so no decision can flatter it)."""
    return HELDOUT_PARTS[int(pid[8:16], 16) % 2]


def prompt_chars(trace: Trace) -> int:
    """A prompt's length against max_prompt_chars: its turns' text, and its tool calls and definitions as JSON."""
    calls = sum(len(json.dumps(m["tool_calls"], ensure_ascii=False)) for m in trace.messages if "tool_calls" in m)
    return sum(len(m["content"]) for m in trace.messages) + calls + (len(json.dumps(trace.tools, ensure_ascii=False)) if trace.tools else 0)


def _accept(line: int, trace: Trace, max_chars: int, long_prompts: LongPrompts) -> ParsedRow:
    """The row if it can be used, its last user turn cut to fit `max_chars` when `long_prompts` is "truncate"; else ValueError."""
    if SURROGATE.search(json.dumps([trace.messages, trace.tools, trace.reply, trace.model, trace.request_id], ensure_ascii=False)):
        raise ValueError("text has an unpaired surrogate escape (not valid Unicode)")
    if any(CONTROL_CHARS.search(text) for text in [*(m["content"] for m in trace.messages), trace.reply or ""]):
        raise ValueError("text contains control characters (binary data?)")
    messages = trace.messages
    ask = last_user_turn(messages)
    prompt = messages[ask]["content"]
    if not normalise_text(prompt):
        raise ValueError("empty prompt")
    excess = prompt_chars(trace) - max_chars
    if excess <= 0:
        return ParsedRow(line, trace)
    if long_prompts == "skip":
        raise ValueError(f"prompt has {max_chars + excess} characters, over the limit of {max_chars}")
    kept = prompt[: max(len(prompt) - excess, 0)]
    if not normalise_text(kept):
        raise ValueError(f"earlier turns leave no room for the prompt within the limit of {max_chars} characters")
    trace.messages = [*messages[:ask], {**messages[ask], "content": kept}, *messages[ask + 1 :]]
    return ParsedRow(line, trace, truncated=True)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


def _read_records(
    path: Path, items: Iterable[Item], log_format: str, max_chars: int, long_prompts: LongPrompts, batch_size: int
) -> Iterator[ParsedFile]:
    """Each record through the format's reader (`auto`: the one its first records have), a batch at a time."""
    numbering = Numbering()
    batches = (numbering(files.records(batch)) for batch in _batches(items, batch_size))
    ahead = []  # the batches read to find the first records that `auto` looks at
    if log_format == "auto":
        values = []
        while len(values) < DETECT_RECORDS and (batch := next(batches, None)) is not None:
            ahead.append(batch)
            values += [item.value for item in batch if not item.error]
        reader = detect(values)
    else:
        reader = FORMATS[log_format]
    for batch in itertools.chain(ahead, batches):
        parsed = ParsedFile(path, log_format=reader.name)
        for item in batch:
            try:
                if item.error:
                    raise ValueError(item.error)
                trace = read_trace(item.value, reader)
                if trace is None:
                    parsed.skipped += 1
                else:
                    parsed.rows.append(_accept(item.number, trace, max_chars, long_prompts))
            except ValueError as err:
                parsed.bad.append(BadRow(item.number, str(err), excerpt(item.raw)))
        yield parsed


def _read_csv(
    path: Path, text: TextIO, encoding: str, text_column: str, max_chars: int, long_prompts: LongPrompts, batch_size: int
) -> Iterator[ParsedFile]:
    # The length limit decides about long prompts, not csv's field limit.
    csv.field_size_limit(max(csv.field_size_limit(), files.CSV_FIELD_LIMIT))
    # strict: an unterminated quote (a file cut short) is an error, not a field that runs to the end.
    reader = csv.reader(text, strict=True)
    try:
        columns = next(reader)
        while not columns:  # blank lines before the header
            columns = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise FileProblem(f"CSV header is malformed: {err}") from err
    if text_column not in columns:
        raise FileProblem(f"CSV has no column {text_column!r} (columns: {columns})")
    column = columns.index(text_column)
    parsed = ParsedFile(path, log_format="csv")
    while True:
        if parsed.rows_read >= batch_size:
            yield parsed
            parsed = ParsedFile(path, log_format="csv")
        try:
            record = next(reader)
        except StopIteration:
            yield parsed
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
            parsed.rows.append(_accept(reader.line_num, Trace([{"role": "user", "content": raw}]), max_chars, long_prompts))
        except ValueError as err:
            parsed.bad.append(BadRow(reader.line_num, str(err), excerpt(raw)))


def read_log_file(
    path: Path,
    text_column: str = "text",
    max_chars: int = 4000,
    long_prompts: LongPrompts = "skip",
    log_format: LogFormatName = "auto",
    batch_size: int = BATCH_RECORDS,
) -> Iterator[ParsedFile]:
    """Read one log file as it streams in, a ParsedFile for each batch of at most `batch_size` records; rows that
    cannot be used are in each batch's `bad` with line and reason.

    A problem with the whole file (unreadable, gone since it was listed, a CSV without the text column, not Parquet
    or gzip after all) is one bad row at line 0, so that one broken file does not stop the others; found partway
    (gzip data corrupt after good members, say), it follows the batches read before it. An empty file is a file
    with no rows. A prompt over `max_chars` is quarantined ("skip") or cut ("truncate").
    """
    if long_prompts not in get_args(LongPrompts):
        raise ValueError(f"long_prompts must be one of {get_args(LongPrompts)}, not {long_prompts!r}")
    if log_format not in get_args(LogFormatName):
        raise ValueError(f"log_format must be one of {get_args(LogFormatName)}, not {log_format!r}")
    suffix, found = log_suffix(path.name), ""
    try:
        if suffix is None:
            raise FileProblem(f"unsupported log format {path.suffix.lower()!r} (expected {', '.join(LOG_SUFFIXES)}, or one of them .gz)")
        for parsed in _read_batches(path, suffix, text_column, max_chars, long_prompts, log_format, batch_size):
            found = parsed.log_format
            yield parsed
    except FileProblem as err:
        yield ParsedFile(path, bad=[BadRow(0, str(err), "")], log_format=found or ("csv" if suffix == ".csv" else ""))
    except OSError as err:
        yield ParsedFile(path, bad=[BadRow(0, f"file could not be read: {err.strerror or err}", "")], log_format=found)


def _read_batches(path, suffix, text_column, max_chars, long_prompts, log_format, batch_size) -> Iterator[ParsedFile]:
    if suffix == ".parquet":
        with path.open("rb") as raw:
            # Parquet is read from its end: a gzipped one is un-gzipped whole first.
            source = io.BytesIO(b"".join(files.gunzip(raw))) if path.name.lower().endswith(".gz") else raw
            yield from _read_records(path, files.parquet_rows(source, batch_size), log_format, max_chars, long_prompts, batch_size)
        return
    with files.open_text(path) as (text, encoding):
        if suffix == ".csv":
            yield from _read_csv(path, text, encoding, text_column, max_chars, long_prompts, batch_size)
        else:
            items = files.json_lines(text, encoding) if suffix == ".jsonl" else files.json_document(text.read(), encoding)
            yield from _read_records(path, items, log_format, max_chars, long_prompts, batch_size)


def parse_log_file(
    path: Path,
    text_column: str = "text",
    max_chars: int = 4000,
    long_prompts: LongPrompts = "skip",
    log_format: LogFormatName = "auto",
    batch_size: int = BATCH_RECORDS,
) -> ParsedFile:
    """Read one log file whole: the batches of `read_log_file` gathered."""
    whole = ParsedFile(path)
    for parsed in read_log_file(path, text_column, max_chars, long_prompts, log_format, batch_size):
        whole.rows += parsed.rows
        whole.bad += parsed.bad
        whole.skipped += parsed.skipped
        whole.log_format = parsed.log_format or whole.log_format
    return whole

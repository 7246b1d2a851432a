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
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from tao_dagster.traces import FORMATS, LogFormatName, Trace, detect, files, last_user_turn, read_trace
from tao_dagster.traces.files import UNDECODABLE, FileProblem, Item, excerpt

LOG_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # each also gzipped, with .gz after it
LongPrompts = Literal["skip", "truncate"]
SURROGATE = re.compile("[\ud800-\udfff]")
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 and DEL, except tab and line breaks


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


def _read_records(parsed: ParsedFile, items: list[Item], log_format: str, max_chars: int, long_prompts: LongPrompts) -> None:
    """Each record through the format's reader (`auto`: the one its first records have)."""
    reader = detect([item.value for item in items if not item.error]) if log_format == "auto" else FORMATS[log_format]
    parsed.log_format = reader.name
    for item in items:
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


def _read_csv(parsed: ParsedFile, text: str, encoding: str, text_column: str, max_chars: int, long_prompts: LongPrompts) -> None:
    parsed.log_format = "csv"
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
            parsed.rows.append(_accept(reader.line_num, Trace([{"role": "user", "content": raw}]), max_chars, long_prompts))
        except ValueError as err:
            parsed.bad.append(BadRow(reader.line_num, str(err), excerpt(raw)))


def parse_log_file(
    path: Path, text_column: str = "text", max_chars: int = 4000, long_prompts: LongPrompts = "skip", log_format: LogFormatName = "auto"
) -> ParsedFile:
    """Read one log file; rows that cannot be used are returned in `bad` with line and reason.

    A problem with the whole file (unreadable, gone since it was listed, a CSV without the text
    column, not Parquet or gzip after all) is one bad row at line 0, so that one broken file does not stop the
    others. An empty file is a file with no rows. A prompt over `max_chars` is quarantined ("skip") or cut ("truncate").
    """
    if long_prompts not in get_args(LongPrompts):
        raise ValueError(f"long_prompts must be one of {get_args(LongPrompts)}, not {long_prompts!r}")
    if log_format not in get_args(LogFormatName):
        raise ValueError(f"log_format must be one of {get_args(LogFormatName)}, not {log_format!r}")
    parsed = ParsedFile(path)
    text = ""
    try:
        suffix = log_suffix(path.name)
        if suffix is None:
            raise FileProblem(f"unsupported log format {path.suffix.lower()!r} (expected {', '.join(LOG_SUFFIXES)}, or one of them .gz)")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise FileProblem(f"file could not be read: {err.strerror or err}") from err
        data = files.gunzip(data) if path.name.lower().endswith(".gz") else data
        if suffix == ".parquet":
            _read_records(parsed, files.records(files.parquet_rows(data)), log_format, max_chars, long_prompts)
            return parsed
        text, encoding = files.decode(data)
        if not text.strip():
            return parsed
        if suffix == ".csv":
            _read_csv(parsed, text, encoding, text_column, max_chars, long_prompts)
        else:
            items = files.json_lines(text, encoding) if suffix == ".jsonl" else files.json_document(text, encoding)
            _read_records(parsed, files.records(items), log_format, max_chars, long_prompts)
    except FileProblem as err:
        parsed.bad.append(BadRow(0, str(err), excerpt(text)))
    return parsed

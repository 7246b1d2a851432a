"""Parse production log files into prompts, keeping every bad row with its reason.

A log file is JSONL (`{"messages": [...]}` or `{"prompt": "..."}` per line) or CSV with a text column.
Each accepted row becomes a chat message list; its prompt id is a hash of the normalised messages, so
the same prompt arriving in two files collapses to one prompt. Only roles and contents are read: any
other field (a label, say) never leaves this module.
"""

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant")
LOG_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass
class ParsedRow:
    line: int
    messages: list[dict]


@dataclass
class BadRow:
    line: int
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


def normalise_text(text: str) -> str:
    """Collapse whitespace so that trivially different copies of a prompt hash alike."""
    return " ".join(text.split())


def prompt_id(messages: list[dict]) -> str:
    canonical = json.dumps([[m["role"], normalise_text(m["content"])] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_heldout(pid: str, fraction: float) -> bool:
    """Deterministic evaluation-only slice: the same prompt is held out in every run and every file."""
    return int(pid[:8], 16) / 0xFFFFFFFF < fraction


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


def _check(messages: list[dict], max_chars: int) -> list[dict]:
    if not normalise_text(messages[-1]["content"]):
        raise ValueError("empty prompt")
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        raise ValueError(f"prompt has {total} characters, over the limit of {max_chars}")
    return messages


def parse_log_file(path: Path, text_column: str = "text", max_chars: int = 4000) -> ParsedFile:
    """Read one log file; rows that cannot be used are returned in `bad` with line and reason.

    A problem with the whole file (unreadable, gone since it was listed, a CSV without the text
    column) is one bad row at line 0, so that one broken file does not stop the others.
    """
    parsed = ParsedFile(path)
    suffix = path.suffix.lower()
    if suffix not in LOG_SUFFIXES:
        parsed.bad.append(BadRow(0, f"unsupported log format {suffix!r} (expected .jsonl or .csv)", ""))
        return parsed
    try:
        data = path.read_bytes()
    except OSError as err:
        parsed.bad.append(BadRow(0, f"file could not be read: {err.strerror or err}", ""))
        return parsed
    if suffix == ".csv":
        text = data.decode("utf-8-sig", errors="replace")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or text_column not in reader.fieldnames:
            parsed.bad.append(BadRow(0, f"CSV has no column {text_column!r} (columns: {reader.fieldnames})", text[:2000]))
            return parsed
        for record in reader:
            line = reader.line_num
            raw = record.get(text_column) or ""
            try:
                if "\ufffd" in raw:
                    raise ValueError("text is not valid UTF-8")
                parsed.rows.append(ParsedRow(line, _check([{"role": "user", "content": raw}], max_chars)))
            except ValueError as err:
                parsed.bad.append(BadRow(line, str(err), raw[:2000]))
        return parsed
    for line, raw_bytes in enumerate(data.splitlines(), start=1):
        if not raw_bytes.strip():
            continue
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError:
            parsed.bad.append(BadRow(line, "line is not valid UTF-8", raw_bytes.decode("utf-8", "replace")[:2000]))
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            parsed.bad.append(BadRow(line, f"malformed JSON: {err.msg}", raw[:2000]))
            continue
        try:
            parsed.rows.append(ParsedRow(line, _check(_messages_from_record(record), max_chars)))
        except ValueError as err:
            parsed.bad.append(BadRow(line, str(err), raw[:2000]))
    return parsed

"""Readers of the traces users have, one per log format, chosen by the `log_format` setting or, with `auto`, from a
file's first records: OpenAI chat-completions logs, OpenAI batch input, the chat / fine-tuning shape, OpenTelemetry
GenAI spans and Langfuse observations. Each turns one record into a Trace (messages.py), or None for a record of no
model call, which is skipped; a record it cannot use raises ValueError with the reason it is quarantined with.
How files become records (JSON Lines, JSON, gzip, Parquet) is files.py.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tao_dagster.traces.langfuse import observation_trace
from tao_dagster.traces.messages import ROLES, Trace, last_user_turn
from tao_dagster.traces.openai import batch_trace, chat_completions_trace, messages_trace
from tao_dagster.traces.otel import span_trace

LogFormatName = Literal["auto", "chat_completions", "openai_batch", "messages", "otel", "langfuse"]
DETECT_RECORDS = 20  # how many of a file's first records `auto` looks at


@dataclass(frozen=True)
class LogFormat:
    name: str
    claims: Callable[[dict], bool]  # whether a record has this format's shape
    read: Callable[[dict], Trace | None]
    mismatch: str  # the reason a record of another shape is quarantined with


FORMATS = {
    f.name: f
    for f in (  # in the order `auto` tries them
        LogFormat("openai_batch", lambda r: "custom_id" in r, batch_trace, "not an OpenAI batch line (no 'custom_id')"),
        LogFormat("chat_completions", lambda r: "request" in r, chat_completions_trace, "not a chat-completions log record (no 'request')"),
        LogFormat("otel", lambda r: isinstance(r.get("attributes"), dict) and "context" in r, span_trace, "not an OpenTelemetry span"),
        LogFormat(
            "langfuse",
            lambda r: "type" in r and "startTime" in r,
            observation_trace,
            "not a Langfuse observation",
        ),
        LogFormat("messages", lambda r: "messages" in r or "prompt" in r, messages_trace, "object has neither 'messages' nor 'prompt'"),
    )
}


def detect(records: list[object]) -> LogFormat:
    """The format that claims the first of a file's first records any format claims; `messages` when none does, whose
    reasons then say what each record lacks."""
    for record in records[:DETECT_RECORDS]:
        if isinstance(record, dict):
            for log_format in FORMATS.values():
                if log_format.claims(record):
                    return log_format
    return FORMATS["messages"]


def read_trace(record: object, log_format: LogFormat) -> Trace | None:
    if not isinstance(record, dict):
        raise ValueError("record is not a JSON object")
    if not log_format.claims(record):
        raise ValueError(log_format.mismatch)
    return log_format.read(record)


__all__ = ["FORMATS", "ROLES", "LogFormat", "LogFormatName", "Trace", "detect", "last_user_turn", "read_trace"]

"""A log file's records, counted apart from the parser (ingest.py), so that ingestion's counts reconcile against a
number the parser did not produce: a row the parser loses is a record with neither a prompt nor a quarantine row.
The file is counted as it streams in, like the parser reads it.
"""

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

from tao_dagster.traces.files import CSV_FIELD_LIMIT, open_text


def line_records(lines: Iterable[str]) -> int:
    """Non-blank lines (each ends at \\n, \\r\\n or \\r): one record each."""
    return sum(1 for line in lines if line.strip())


def csv_records(lines: Iterable[str]) -> int:
    """The csv module's records after the header, a malformed one counting as one; blank lines are not records."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader, records, header = csv.reader(lines, strict=True), 0, None
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return records
        except csv.Error:
            record = [""]
        if header is None:
            header = record or None
        else:
            records += bool(record)


COUNTERS: dict[str, Callable[[Iterable[str]], int]] = {".jsonl": line_records, ".csv": csv_records}
# The log formats of one record a line in a .jsonl file; an OpenTelemetry export line holds many spans.
LINE_FORMATS = {"chat_completions", "openai_batch", "messages", "langfuse", "csv"}


def count_records(path: Path, log_format: str) -> int | None:
    """The file's records, or None for a file without a counter here, compressed, a JSON document or Parquet, or of
    a format with several records a line (its parser's count then stands alone)."""
    counter = COUNTERS.get(path.suffix.lower())
    if counter is None or log_format not in LINE_FORMATS:
        return None
    with open_text(path) as (text, _):
        return counter(text)

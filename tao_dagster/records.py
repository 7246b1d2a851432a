"""A log file's records, counted apart from the parser (ingest.py), so that ingestion's counts reconcile against a
number the parser did not produce: a row the parser loses is a record with neither a prompt nor a quarantine row.
"""

import csv
import io
from collections.abc import Callable
from pathlib import Path

from tao_dagster.traces.files import decode


def line_records(text: str) -> int:
    """Non-blank lines, read with universal newlines (\\n, \\r\\n or \\r): one record each."""
    return sum(1 for line in io.StringIO(text, newline=None) if line.strip())


def csv_records(text: str) -> int:
    """The csv module's records after the header, a malformed one counting as one; blank lines are not records."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader, records = csv.reader(io.StringIO(text, newline=""), strict=True), []
    while True:
        try:
            records.append(bool(next(reader)))
        except StopIteration:
            return sum(records[1:])
        except csv.Error:
            records.append(True)


COUNTERS: dict[str, Callable[[str], int]] = {".jsonl": line_records, ".csv": csv_records}
# The log formats of one record a line in a .jsonl file; an OpenTelemetry export line holds many spans.
LINE_FORMATS = {"chat_completions", "openai_batch", "messages", "langfuse", "csv"}


def count_records(path: Path, log_format: str) -> int | None:
    """The file's records, or None for a file without a counter here, compressed, a JSON document or Parquet, or of
    a format with several records a line (its parser's count then stands alone)."""
    counter = COUNTERS.get(path.suffix.lower())
    return counter(decode(path.read_bytes())[0]) if counter and log_format in LINE_FORMATS else None

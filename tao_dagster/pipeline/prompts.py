"""Ingest one production log file as a partition: deduplicated prompts, a held-out slice and a quarantine."""

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from tao_dagster.context_window import WindowCheck
from tao_dagster.domain import DomainSettings
from tao_dagster.ingest import BATCH_RECORDS, ParsedFile, is_heldout, normalise_text, prompt_id, read_log_file
from tao_dagster.records import count_records
from tao_dagster.traces import last_user_turn
from tao_dagster.warehouse import STAGED, Warehouse

logger = logging.getLogger(__name__)


def ingest_partition(
    db: Warehouse, key: str, path: Path, domain: DomainSettings, window: WindowCheck, log=logger, batch_size: int = BATCH_RECORDS
) -> dict:
    """Parse the file and replace partition `key` with its rows, streamed a batch of `batch_size` records at a time
    (memory holds a batch, not the file); every bad row, and every prompt that does not fit the model's `window`
    with some strategy, is quarantined with its reason (or cut, under long_prompts: truncate). Returns the
    partition's counts: records (counted apart from the parser where the file has one record a line)
    = accepted + duplicates + quarantined + skipped when nothing was lost."""
    seen, found = Counter(), {"log_format": ""}

    def staged() -> Iterator[pa.RecordBatch]:
        for parsed in read_log_file(
            path, domain.text_column, domain.max_prompt_chars, domain.long_prompts, domain.log_format, batch_size=batch_size
        ):
            window.apply(parsed, domain.long_prompts)
            for bad in parsed.bad:
                log.warning(f"{parsed.path}:{bad.line}: quarantined: {bad.reason}")
            seen.update(
                rows_read=parsed.rows_read,
                skipped=parsed.skipped,  # records of no model call, which are not rows
                truncated=sum(row.truncated for row in parsed.rows),
                with_reply=sum(row.trace.reply is not None for row in parsed.rows),
                whole_file=sum(bad.line == 0 for bad in parsed.bad),  # unreadable, or no text column: one quarantined row
            )
            found["log_format"] = parsed.log_format or found["log_format"]
            yield staged_batch(parsed, domain.heldout_fraction)

    stored = db.store_partition(key, staged())
    # A whole-file problem has no line to count from: the parser's count stands alone.
    records = None if seen["whole_file"] else count_records(path, found["log_format"])
    return {
        "partition": key,
        "log_format": found["log_format"],
        "records": seen["rows_read"] + seen["skipped"] if records is None else records,
        "rows_read": seen["rows_read"],
        **{k: stored[k] for k in ("accepted", "duplicates", "quarantined")},
        "truncated": seen["truncated"],
        "heldout": stored["heldout"],
        "with_reply": seen["with_reply"],
        "skipped": seen["skipped"],
    }


def staged_batch(parsed: ParsedFile, heldout_fraction: float) -> pa.RecordBatch:
    """A batch's accepted and quarantined rows as Warehouse.store_partition takes them."""
    columns = {name: [] for name in STAGED.names}
    for row in parsed.rows:
        trace = row.trace
        pid = prompt_id(trace.messages, trace.tools)
        values = {
            "line": row.line,
            "prompt_id": pid,
            "messages": json.dumps(trace.messages, ensure_ascii=False),
            "tools": json.dumps(trace.tools, ensure_ascii=False) if trace.tools else None,
            "text": normalise_text(trace.messages[last_user_turn(trace.messages)]["content"]),
            "heldout": is_heldout(pid, heldout_fraction),
            **{k: getattr(trace, k) for k in ("request_id", "requested_at", "model", "reply")},
        }
        for name, column in columns.items():
            column.append(values.get(name))
    for bad in parsed.bad:
        values = {"line": bad.line, "reason": bad.reason, "raw": bad.raw}
        for name, column in columns.items():
            column.append(values.get(name))
    columns["source_file"] = [str(parsed.path)] * (len(parsed.rows) + len(parsed.bad))
    return pa.record_batch(list(columns.values()), schema=STAGED)


def reconciles(counts: dict) -> bool:
    """Every record of the file is in the warehouse once. The records are counted apart from the parser and the
    right-hand counts are read back from the warehouse, so a row the parser drops, or one lost or overwritten on
    the way, breaks the equality."""
    return counts["records"] == counts["accepted"] + counts["duplicates"] + counts["quarantined"] + counts.get("skipped", 0)

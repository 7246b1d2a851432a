"""Ingest one production log file as a partition: deduplicated prompts, a held-out slice and a quarantine."""

import json
import logging
from pathlib import Path

from tao_dagster.context_window import WindowCheck
from tao_dagster.domain import DomainSettings
from tao_dagster.ingest import is_heldout, normalise_text, parse_log_file, prompt_id
from tao_dagster.records import count_records
from tao_dagster.traces import last_user_turn
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)


def ingest_partition(db: Warehouse, key: str, path: Path, domain: DomainSettings, window: WindowCheck, log=logger) -> dict:
    """Parse the file and replace partition `key` with its rows; every bad row, and every prompt that does not fit
    the model's `window` with some strategy, is quarantined with its reason (or cut, under long_prompts: truncate).
    Returns the partition's counts: records (counted apart from the parser where the file has one record a line)
    = accepted + duplicates + quarantined + skipped when nothing was lost."""
    parsed = parse_log_file(path, domain.text_column, domain.max_prompt_chars, domain.long_prompts, domain.log_format)
    whole_file = any(bad.line == 0 for bad in parsed.bad)  # unreadable, or no text column: one quarantined row
    records = 1 if whole_file else count_records(path, parsed.log_format)
    window.apply(parsed, domain.long_prompts)
    for bad in parsed.bad:
        log.warning(f"{parsed.path}:{bad.line}: quarantined: {bad.reason}")
    sources = []
    for row in parsed.rows:
        trace = row.trace
        pid = prompt_id(trace.messages, trace.tools)
        sources.append(
            {
                "line": row.line,
                "source_file": str(parsed.path),
                "prompt_id": pid,
                "messages": json.dumps(trace.messages, ensure_ascii=False),
                "tools": json.dumps(trace.tools, ensure_ascii=False) if trace.tools else None,
                "text": normalise_text(trace.messages[last_user_turn(trace.messages)]["content"]),
                "heldout": is_heldout(pid, domain.heldout_fraction),
                **{k: getattr(trace, k) for k in ("request_id", "requested_at", "model", "reply")},
            }
        )
    quarantine = [{"source_file": str(parsed.path), "line": b.line, "reason": b.reason, "raw": b.raw} for b in parsed.bad]
    stored = db.store_partition(key, sources, quarantine)
    return {
        "partition": key,
        "log_format": parsed.log_format,
        "records": parsed.rows_read + parsed.skipped if records is None else records,
        "rows_read": parsed.rows_read,
        **{k: stored[k] for k in ("accepted", "duplicates", "quarantined")},
        "truncated": sum(row.truncated for row in parsed.rows),
        "heldout": stored["heldout"],
        "with_reply": sum(row.trace.reply is not None for row in parsed.rows),
        "skipped": parsed.skipped,  # records of no model call, which are not rows
    }


def reconciles(counts: dict) -> bool:
    """Every record of the file is in the warehouse once. The records are counted apart from the parser and the
    right-hand counts are read back from the warehouse, so a row the parser drops, or one lost or overwritten on
    the way, breaks the equality."""
    return counts["records"] == counts["accepted"] + counts["duplicates"] + counts["quarantined"] + counts.get("skipped", 0)

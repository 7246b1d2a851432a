"""Ingest one production log file as a partition: deduplicated prompts, a held-out slice and a quarantine."""

import json
import logging
from pathlib import Path

from tao_dagster.context_window import WindowCheck
from tao_dagster.domain import DomainSettings
from tao_dagster.ingest import is_heldout, normalise_text, parse_log_file, prompt_id
from tao_dagster.records import count_records
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)


def ingest_partition(db: Warehouse, key: str, path: Path, domain: DomainSettings, window: WindowCheck, log=logger) -> dict:
    """Parse the file and replace partition `key` with its rows; every bad row, and every prompt that does not fit
    the model's `window` with some strategy, is quarantined with its reason (or cut, under long_prompts: truncate).
    Returns the partition's counts: records (counted apart from the parser) = accepted + duplicates + quarantined
    when nothing was lost."""
    parsed = parse_log_file(path, domain.text_column, domain.max_prompt_chars, domain.long_prompts)
    whole_file = any(bad.line == 0 for bad in parsed.bad)  # unreadable, or no text column: one quarantined row
    records = 1 if whole_file else count_records(path)
    window.apply(parsed, domain.long_prompts)
    for bad in parsed.bad:
        log.warning(f"{parsed.path}:{bad.line}: quarantined: {bad.reason}")
    sources = []
    for row in parsed.rows:
        pid = prompt_id(row.messages)
        sources.append(
            {
                "line": row.line,
                "source_file": str(parsed.path),
                "prompt_id": pid,
                "messages": json.dumps(row.messages, ensure_ascii=False),
                "text": normalise_text(row.messages[-1]["content"]),
                "heldout": is_heldout(pid, domain.heldout_fraction),
            }
        )
    quarantine = [{"source_file": str(parsed.path), "line": b.line, "reason": b.reason, "raw": b.raw} for b in parsed.bad]
    stored = db.store_partition(key, sources, quarantine)
    return {
        "partition": key,
        "records": parsed.rows_read if records is None else records,
        "rows_read": parsed.rows_read,
        **{k: stored[k] for k in ("accepted", "duplicates", "quarantined")},
        "truncated": sum(row.truncated for row in parsed.rows),
        "heldout": stored["heldout"],
    }


def reconciles(counts: dict) -> bool:
    """Every record of the file is in the warehouse once. The records are counted apart from the parser and the
    right-hand counts are read back from the warehouse, so a row the parser drops, or one lost or overwritten on
    the way, breaks the equality."""
    return counts["records"] == counts["accepted"] + counts["duplicates"] + counts["quarantined"]

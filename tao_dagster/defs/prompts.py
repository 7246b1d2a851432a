"""raw_prompts: production log files -> deduplicated prompts, a held-out slice and a quarantine."""

import json

import dagster as dg
import polars as pl

from tao_dagster.defs.deploy import cpu_step
from tao_dagster.defs.partitions import prompt_partition_asset
from tao_dagster.defs.resources import TRANSIENT_RETRY, DomainResource, LogSourceResource, WarehouseResource, stops_when_interrupted
from tao_dagster.evaluation import markdown_table
from tao_dagster.ingest import is_heldout, normalise_text, parse_log_file, prompt_id

COUNTS_RECONCILE = "counts_reconcile"


def reconcile_counts(per_partition: list[dict]) -> dg.AssetCheckResult:
    """Pass when, in every partition, rows read = accepted + duplicates + quarantined.

    The right-hand counts are read back from the warehouse, so a row lost or overwritten on the way fails
    the check, and a failure blocks the stages downstream of raw_prompts in the same run.
    """
    unreconciled = [c["partition"] for c in per_partition if c["rows_read"] != c["accepted"] + c["duplicates"] + c["quarantined"]]
    return dg.AssetCheckResult(
        check_name=COUNTS_RECONCILE,
        passed=not unreconciled,
        metadata={
            "unreconciled_partitions": dg.MetadataValue.json(unreconciled),
            "per_partition": dg.MetadataValue.md(markdown_table(per_partition)),
        },
    )


@prompt_partition_asset(
    kinds={"duckdb", "polars"},
    retry_policy=TRANSIENT_RETRY,  # reading from S3
    op_tags=cpu_step(),
    description="Prompts parsed from one production log file: deduplicated by a hash of the normalised "
    "messages, a deterministic held-out slice set aside for evaluation only, bad rows quarantined with reason.",
    check_specs=[
        dg.AssetCheckSpec(
            COUNTS_RECONCILE,
            asset="raw_prompts",
            blocking=True,
            description="Every row read is in the warehouse once: rows read = accepted + duplicates + quarantined, per partition.",
        )
    ],
)
@stops_when_interrupted
def raw_prompts(
    context: dg.AssetExecutionContext, domain: DomainResource, logs: LogSourceResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    db = warehouse.get()
    per_partition, fingerprints, listed = [], {}, logs.list_files()
    for key in context.partition_keys:
        # A partition whose file has gone is quarantined as unreadable, like any other broken file.
        path, fingerprints[key] = logs.fetch(key, listed)
        parsed = parse_log_file(path, domain.text_column, domain.max_prompt_chars, domain.long_prompts)
        for bad in parsed.bad:
            context.log.warning(f"{parsed.path}:{bad.line}: quarantined: {bad.reason}")
        quarantine = [
            {"partition": key, "source_file": str(parsed.path), "line": b.line, "reason": b.reason, "raw": b.raw} for b in parsed.bad
        ]
        # Read what is known and write in one transaction: the connection holds the file's lock, so a run
        # ingesting another file at the same time cannot also take a shared prompt as new.
        with db.transaction() as con:
            seen = {pid for (pid,) in con.execute("select prompt_id from prompts where first_partition <> ?", [key]).fetchall()}
            prompts, sources = {}, []
            for row in parsed.rows:
                pid = prompt_id(row.messages)
                duplicate = pid in seen or pid in prompts
                if not duplicate:
                    prompts[pid] = {
                        "prompt_id": pid,
                        "messages": json.dumps(row.messages, ensure_ascii=False),
                        "text": normalise_text(row.messages[-1]["content"]),
                        "heldout": is_heldout(pid, domain.heldout_fraction),
                        "first_partition": key,
                    }
                source = {"partition": key, "source_file": str(parsed.path), "line": row.line, "prompt_id": pid, "duplicate": duplicate}
                sources.append(source)
            con.execute("delete from prompt_sources where partition = ?", [key])
            con.execute("delete from quarantine where partition = ?", [key])
            db.insert(con, "prompts", pl.DataFrame(list(prompts.values()), schema_overrides={"heldout": pl.Boolean}), "ignore")
            db.insert(con, "prompt_sources", pl.DataFrame(sources))
            db.insert(
                con,
                "quarantine",
                pl.DataFrame(
                    quarantine,
                    schema={"partition": pl.String, "source_file": pl.String, "line": pl.Int64, "reason": pl.String, "raw": pl.String},
                ),
            )
            accepted, duplicates = con.execute(
                "select count(*) filter (where not duplicate), count(*) filter (where duplicate) from prompt_sources where partition = ?",
                [key],
            ).fetchone()
            (quarantined,) = con.execute("select count(*) from quarantine where partition = ?", [key]).fetchone()
        counts = {
            "partition": key,
            "rows_read": parsed.rows_read,
            "accepted": accepted,
            "duplicates": duplicates,
            "quarantined": quarantined,
            "truncated": sum(row.truncated for row in parsed.rows),
            "heldout": sum(p["heldout"] for p in prompts.values()),
        }
        per_partition.append(counts)
        context.log.info(f"raw_prompts {key}: {counts}")

    totals = {k: sum(c[k] for c in per_partition) for k in ("rows_read", "accepted", "duplicates", "quarantined", "truncated", "heldout")}
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in totals.items()},
            "dagster/row_count": dg.MetadataValue.int(totals["accepted"]),
            "per_partition": dg.MetadataValue.md(markdown_table(per_partition)),
            "source_fingerprints": dg.MetadataValue.json(fingerprints),  # what the log sensor compares against
        },
        check_results=[reconcile_counts(per_partition)],
    )

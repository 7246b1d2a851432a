"""raw_prompts: production log files -> deduplicated prompts, a held-out slice and a quarantine."""

import dagster as dg

from tao_dagster.context_window import window_check
from tao_dagster.defs.deploy import cpu_step
from tao_dagster.defs.partitions import prompt_partition_asset
from tao_dagster.defs.resources import DomainResource, LogSourceResource, PolicyResource, WarehouseResource
from tao_dagster.defs.steps import TRANSIENT_RETRY, stage_step
from tao_dagster.evaluation import markdown_table
from tao_dagster.pipeline.prompts import ingest_partition, reconciles

COUNTS_RECONCILE = "counts_reconcile"
COUNTED = ("records", "rows_read", "accepted", "duplicates", "quarantined", "truncated", "heldout", "with_reply", "skipped")


def reconcile_counts(per_partition: list[dict]) -> dg.AssetCheckResult:
    """Pass when, in every partition, the file's records (counted apart from the parser) = accepted + duplicates +
    quarantined, the right-hand counts read back from the warehouse; a failure blocks the stages downstream of
    raw_prompts in the same run."""
    return dg.AssetCheckResult(
        check_name=COUNTS_RECONCILE,
        passed=all(reconciles(c) for c in per_partition),
        metadata={
            "unreconciled_partitions": dg.MetadataValue.json([c["partition"] for c in per_partition if not reconciles(c)]),
            "per_partition": dg.MetadataValue.md(markdown_table(per_partition)),
        },
    )


@prompt_partition_asset(
    kinds={"duckdb", "polars"},
    retry_policy=TRANSIENT_RETRY,  # reading from S3
    op_tags=cpu_step(),
    description="Prompts parsed from one production log file: deduplicated by a hash of the normalised "
    "messages, a deterministic held-out slice set aside for evaluation only, bad rows and prompts too long for the "
    "model's window with some strategy (in the policy's tokens) quarantined with reason.",
    check_specs=[
        dg.AssetCheckSpec(
            COUNTS_RECONCILE,
            asset="raw_prompts",
            blocking=True,
            description="Every record of the file is in the warehouse once: records (counted apart from the parser) = accepted + "
            "duplicates + quarantined, per partition.",
        )
    ],
)
@stage_step
def raw_prompts(
    context: dg.AssetExecutionContext, domain: DomainResource, policy: PolicyResource, logs: LogSourceResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    db, source, window = warehouse.get(), logs.get(), window_check(domain.load(), policy)
    per_partition, fingerprints, listed = [], {}, source.list_files()
    for key in context.partition_keys:
        path, fingerprints[key] = source.fetch(key, listed)  # a file gone since it was listed is quarantined as unreadable
        per_partition.append(ingest_partition(db, key, path, domain, window, context.log))
        context.log.info(f"raw_prompts {key}: {per_partition[-1]}")
    totals = {k: sum(c[k] for c in per_partition) for k in COUNTED}
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in totals.items()},
            "dagster/row_count": dg.MetadataValue.int(totals["accepted"]),
            "per_partition": dg.MetadataValue.md(markdown_table(per_partition)),
            "source_fingerprints": dg.MetadataValue.json(fingerprints),  # what the log sensor compares against
        },
        check_results=[reconcile_counts(per_partition)],
    )

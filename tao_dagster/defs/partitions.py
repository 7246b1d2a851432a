"""One dynamic partition per production log file."""

import dagster as dg

log_files = dg.DynamicPartitionsDefinition(name="log_files")


def prompt_partition_asset(**kwargs):
    """`dg.asset` for the per-log-file stages: partitioned by file, and a backfill of many partitions
    runs as one run so the model and engine load once."""
    return dg.asset(partitions_def=log_files, backfill_policy=dg.BackfillPolicy.single_run(), group_name="tao", **kwargs)

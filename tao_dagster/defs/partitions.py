"""One dynamic partition per production log file."""

import hashlib
import re

import dagster as dg

log_files = dg.DynamicPartitionsDefinition(name="log_files")


def partition_key(name: str) -> str:
    """A log file's partition key: its name (or S3 key below the prefix) with anything but letters, digits,
    dot, dash and underscore replaced, since keys appear in URLs, CLI ranges and SQL. A name that had to
    change gets a short hash of the original before its suffix, so two names never share a key."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe == name:
        return name
    stem, dot, suffix = safe.rpartition(".")
    tag = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{stem}-{tag}.{suffix}" if dot else f"{safe}-{tag}"


def prompt_partition_asset(**kwargs):
    """`dg.asset` for the per-log-file stages: partitioned by file, and a backfill of many partitions
    runs as one run so the model and engine load once."""
    return dg.asset(partitions_def=log_files, backfill_policy=dg.BackfillPolicy.single_run(), group_name="tao", **kwargs)

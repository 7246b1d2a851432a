"""One dynamic partition per production log file."""

import re
from pathlib import Path

import dagster as dg

from tao_dagster.ingest import LOG_SUFFIXES

log_files = dg.DynamicPartitionsDefinition(name="log_files")


def partition_key(path: Path) -> str:
    """A log file's partition key: its name with anything but letters, digits, dot, dash and
    underscore replaced, since keys appear in URLs, CLI ranges and SQL."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.name)


def log_files_in(log_dir: str | Path) -> dict[str, Path]:
    """Partition key -> file, for every log file in the folder."""
    folder = Path(log_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"log_dir {folder} is not a readable folder: set TAO_LOG_DIR or the domain resource's log_dir")
    return {partition_key(p): p for p in sorted(folder.iterdir()) if p.suffix.lower() in LOG_SUFFIXES and p.is_file()}


def prompt_partition_asset(**kwargs):
    """`dg.asset` for the per-log-file stages: partitioned by file, and a backfill of many partitions
    runs as one run so the model and engine load once."""
    return dg.asset(partitions_def=log_files, backfill_policy=dg.BackfillPolicy.single_run(), group_name="tao", **kwargs)

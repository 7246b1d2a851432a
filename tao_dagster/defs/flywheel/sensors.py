"""New production logs become partitions and score_partitions runs: a burst of new files shares bounded runs, so
the engine loads once per run rather than once per file; a changed file gets a run of its own."""

import hashlib
import json

import dagster as dg

from tao_dagster.defs.flywheel.jobs import score_partitions_job
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import FlywheelResource, LogSourceResource
from tao_dagster.defs.scores.assets import reward_scores


def latest_materialization(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset, asset_partitions=[partition]), limit=1).records
    return records[0] if records else None


def ingested_fingerprint(instance: dg.DagsterInstance, key: str) -> str | None:
    """The fingerprint of the file that raw_prompts last ingested for this partition, if any."""
    record = latest_materialization(instance, raw_prompts.key, key)
    meta = record.asset_materialization.metadata.get("source_fingerprints") if record else None
    return meta.value.get(key) if meta else None


def already_scored(instance: dg.DagsterInstance, key: str, fingerprint: str) -> bool:
    """This exact file was ingested, and its partition scored after that."""
    if ingested_fingerprint(instance, key) != fingerprint:
        return False
    scored = latest_materialization(instance, reward_scores.key, key)
    return bool(scored) and scored.storage_id > latest_materialization(instance, raw_prompts.key, key).storage_id


def scoring_run(keys: list[str], fingerprints: dict[str, str], names: list[str]) -> dg.RunRequest:
    """One score_partitions run for log files whose partitions are consecutive (new ones, added in this order): a
    partition range, so that the engine loads once for all of them (single-run backfill policy)."""
    if len(keys) == 1:
        return dg.RunRequest(run_key=f"{keys[0]}@{fingerprints[keys[0]]}", partition_key=keys[0], tags={"tao/log_file": names[0]})
    digest = hashlib.sha256(json.dumps([[k, fingerprints[k]] for k in keys]).encode()).hexdigest()[:12]
    return dg.RunRequest(
        run_key=f"{keys[0]}...{keys[-1]}@{digest}",
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
            "tao/log_files": str(len(keys)),
        },
    )


@dg.sensor(
    job=score_partitions_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the log location (a folder or an S3 prefix). New files become log_files partitions and "
    "score_partitions runs, a burst grouped into runs of at most max_files_per_run partitions (the flywheel "
    "resource); a file whose content changed (new size/mtime or ETag) is ingested again under the same partition, "
    "in a run of its own, so new lines go on and unchanged ones deduplicate. The cursor maps partition keys to "
    "fingerprints.",
)
def new_log_files(context: dg.SensorEvaluationContext, logs: LogSourceResource, flywheel: FlywheelResource) -> dg.SensorResult:
    seen = json.loads(context.cursor) if context.cursor else {}
    new_partitions, requests, names = [], [], {}
    for key, file in logs.get().list_files().items():
        if seen.get(key) == file.fingerprint:
            continue
        known = context.instance.has_dynamic_partition(log_files.name, key)
        if key not in seen and known and ingested_fingerprint(context.instance, key) == file.fingerprint:
            seen[key] = file.fingerprint  # ingested before this sensor saw it (by `tao-dagster demo`, say)
            continue
        seen[key], names[key] = file.fingerprint, file.name
        if known:
            context.log.info(f"{file.name} changed since it was ingested ({file.fingerprint}): ingesting partition {key} again")
            requests.append(scoring_run([key], seen, [file.name]))
        else:
            new_partitions.append(key)
            context.log.info(f"new log file {file.name}: partition {key}")
    size = max(flywheel.max_files_per_run, 1)
    for start in range(0, len(new_partitions), size):  # added in this order, so each group is a range of partitions
        group = new_partitions[start : start + size]
        requests.append(scoring_run(group, seen, [names[k] for k in group]))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[log_files.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(seen, sort_keys=True),
    )

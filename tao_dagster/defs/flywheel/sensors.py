"""New production logs become partitions: each new or changed log file starts a score_partitions run for it."""

import json

import dagster as dg

from tao_dagster.defs.flywheel.jobs import score_partitions_job
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import LogSourceResource
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


@dg.sensor(
    job=score_partitions_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the log location (a folder or an S3 prefix). Each new file becomes a log_files partition and "
    "a score_partitions run for it; a file whose content changed (new size/mtime or ETag) is ingested again under the "
    "same partition, so new lines go on and unchanged ones deduplicate. The cursor maps partition keys to fingerprints.",
)
def new_log_files(context: dg.SensorEvaluationContext, logs: LogSourceResource) -> dg.SensorResult:
    seen = json.loads(context.cursor) if context.cursor else {}
    new_partitions, requests = [], []
    for key, file in logs.get().list_files().items():
        if seen.get(key) == file.fingerprint:
            continue
        known = context.instance.has_dynamic_partition(log_files.name, key)
        if key not in seen and known and ingested_fingerprint(context.instance, key) == file.fingerprint:
            seen[key] = file.fingerprint  # ingested before this sensor saw it (by `tao-dagster demo`, say)
            continue
        if known:
            context.log.info(f"{file.name} changed since it was ingested ({file.fingerprint}): ingesting partition {key} again")
        else:
            new_partitions.append(key)
            context.log.info(f"new log file {file.name}: partition {key}")
        requests.append(dg.RunRequest(run_key=f"{key}@{file.fingerprint}", partition_key=key, tags={"tao/log_file": file.name}))
        seen[key] = file.fingerprint
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[log_files.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(seen, sort_keys=True),
    )

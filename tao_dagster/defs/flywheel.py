"""The data flywheel: new production logs become scored partitions, and enough new scored prompts start a
tuning round whose checkpoint the promotion gate may make the next champion."""

import json
import os

import dagster as dg

from tao_dagster.defs.candidates import candidate_responses
from tao_dagster.defs.checkpoint import tuned_checkpoint
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.policy import current_version
from tao_dagster.defs.prompts import raw_prompts
from tao_dagster.defs.report import eval_report
from tao_dagster.defs.resources import FlywheelResource, LogSourceResource, MlflowResource, PolicyResource, WarehouseResource
from tao_dagster.defs.scores import reward_scores
from tao_dagster.warehouse import Warehouse

prompt_assets = [raw_prompts, candidate_responses, reward_scores]
round_assets = [tuned_checkpoint, eval_report]

score_partitions_job = dg.define_asset_job(
    "score_partitions", selection=prompt_assets, description="Ingest, generate and score the selected log-file partitions."
)
tuning_round_job = dg.define_asset_job(
    "tuning_round",
    selection=round_assets,
    description="Train from the current policy on its scored candidates, gate the checkpoint against the base and the "
    "champion, and evaluate it.",
)


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
    for key, file in logs.list_files().items():
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


def new_scored_prompts(db: Warehouse, policy_version: str) -> int:
    """Training prompts with scored candidates from this policy, generated since the last checkpoint was trained."""
    return db.query(
        """select count(distinct c.prompt_id) as n from candidates c
           where c.policy_version = ?
             and c.created_at > coalesce((select max(created_at) from checkpoints), '-infinity'::timestamp)
             and exists (select 1 from scores s where s.candidate_id = c.candidate_id)""",
        [policy_version],
    )["n"][0]


@dg.schedule(
    cron_schedule=os.environ.get("TAO_ROUND_CRON", "0 * * * *"),
    job=tuning_round_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Starts a tuning round when at least `min_new_prompts` training prompts have been scored under the "
    "current policy since the last checkpoint and no run is queued or running. Cron from TAO_ROUND_CRON.",
)
def flywheel_round(
    context: dg.ScheduleEvaluationContext,
    flywheel: FlywheelResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
):
    unfinished = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    active = context.instance.get_run_records(dg.RunsFilter(statuses=unfinished), limit=1)
    if active:  # a round trains on everything scored, so it waits for the queue to drain
        run = active[0].dagster_run
        return dg.SkipReason(f"waiting for run {run.run_id} ({run.job_name}) to finish")
    db = warehouse.get()
    version = current_version(db, policy, mlflow)
    new = new_scored_prompts(db, version)
    if new < flywheel.min_new_prompts:
        return dg.SkipReason(f"{new} prompts scored under {version} since the last checkpoint; a round needs {flywheel.min_new_prompts}")
    return dg.RunRequest(tags={"tao/parent": version, "tao/new_prompts": str(new)})

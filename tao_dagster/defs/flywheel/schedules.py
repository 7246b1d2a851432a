"""The round schedule: enough new scored prompts start a tuning round, whose checkpoint the gate may promote."""

import os

import dagster as dg

from tao_dagster.defs.flywheel.jobs import tuning_round_job
from tao_dagster.defs.resources import FlywheelResource, MlflowResource, PolicyResource, WarehouseResource
from tao_dagster.policies import current_version

UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


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
    active = context.instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED), limit=1)
    if active:  # a round trains on everything scored, so it waits for the queue to drain
        run = active[0].dagster_run
        return dg.SkipReason(f"waiting for run {run.run_id} ({run.job_name}) to finish")
    db = warehouse.get()
    version = current_version(db, policy, mlflow)
    new = db.new_scored_prompts(version)
    if new < flywheel.min_new_prompts:
        return dg.SkipReason(f"{new} prompts scored under {version} since the last checkpoint; a round needs {flywheel.min_new_prompts}")
    return dg.RunRequest(tags={"tao/parent": version, "tao/new_prompts": str(new)})

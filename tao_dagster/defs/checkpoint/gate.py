"""The promotion gate: a tuned checkpoint becomes the champion only if it beats the base and the champion."""

import dagster as dg

from tao_dagster.defs.checkpoint.assets import latest_checkpoint, tuned_checkpoint
from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.resources import DomainResource, MlflowResource, PolicyResource, WarehouseResource
from tao_dagster.defs.steps import TRANSIENT_RETRY, as_metadata, stage_step
from tao_dagster.hardware import compute_precision
from tao_dagster.pipeline.promotion import decide_promotion


@dg.asset_check(
    asset=tuned_checkpoint,
    blocking=True,
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    description="Blocking: the new checkpoint answers the held-out prompts; it is promoted (the MLflow alias "
    "`champion` moves to its model version) only if its mean reward beats the base model's and the current "
    "champion's with the 95% CI of the paired difference above zero. Otherwise the old champion stays and "
    "eval_report does not run.",
)
@stage_step
def promotion_gate(
    context: dg.AssetCheckExecutionContext,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.AssetCheckResult:
    db = warehouse.get()
    promoted, summary = decide_promotion(db, domain, policy, mlflow, latest_checkpoint(context.instance, db, mlflow), context.log)
    precision = compute_precision().metadata() if "reason" in summary else {}  # no model ran for "already the champion"
    return dg.AssetCheckResult(passed=promoted, metadata=as_metadata({**summary, **precision}))

"""candidate_responses: several responses per prompt from varied exploration strategies and sampling."""

import dagster as dg

from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.partitions import prompt_partition_asset
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import DomainResource, MlflowResource, PolicyResource, WarehouseResource
from tao_dagster.defs.steps import TRANSIENT_RETRY, as_metadata, stage_step
from tao_dagster.hardware import compute_precision
from tao_dagster.pipeline.candidates import generate_candidates
from tao_dagster.policies import current_policy


@prompt_partition_asset(
    deps=[raw_prompts],
    kinds={"vllm", "duckdb"},
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    description="N candidate responses per training prompt across the domain's exploration strategies and "
    "sampling settings, from the current policy (the champion checkpoint once one is promoted, else the base model). "
    "Generated and stored in chunks, and only missing candidates are generated, so a rerun after a crash continues "
    "where it stopped; held-out prompts never get candidates.",
)
@stage_step
def candidate_responses(
    context: dg.AssetExecutionContext,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    db = warehouse.get()
    summary = generate_candidates(db, domain, policy, current_policy(db, policy, mlflow), list(context.partition_keys), context.log)
    return dg.MaterializeResult(metadata=as_metadata({**summary, **compute_precision().metadata()}))

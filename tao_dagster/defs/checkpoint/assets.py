"""tuned_checkpoint: the configured algorithm (sft, dpo, sft+dpo) with LoRA, merged, tracked and registered in MLflow."""

import dagster as dg

from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.resources import ArtifactStoreResource, DomainResource, MlflowResource, PolicyResource, WarehouseResource
from tao_dagster.defs.scores.assets import reward_scores
from tao_dagster.defs.steps import TRANSIENT_RETRY, as_metadata, stage_step
from tao_dagster.errors import StageError
from tao_dagster.pipeline.tuning import tune
from tao_dagster.policies import Policy, checkpoint_policy
from tao_dagster.training import TrainSettings
from tao_dagster.warehouse import Warehouse


class TuneConfig(dg.Config, TrainSettings):
    """Training settings, the algorithm among them, editable in the launchpad (see TrainSettings for each field's meaning)."""


@dg.asset(
    deps=[dg.AssetDep(reward_scores, partition_mapping=dg.AllPartitionMapping())],
    group_name="tao",
    kinds={"pytorch", "mlflow"},
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    description="The current policy (champion, else base) tuned with TRL and LoRA on its own scored candidates: SFT on "
    "each training prompt's best, DPO on best-versus-worst pairs, or SFT then DPO (the `algorithm` setting), always "
    "with the plain prompt (no exploration scaffolding). LoRA merged, "
    "saved as a standalone model, logged and registered in MLflow; the promotion gate decides whether it becomes the "
    "champion. Same parent, settings and data give the same checkpoint, which is reused; a killed or failed run of it "
    "resumes from its last Trainer checkpoint.",
)
@stage_step
def tuned_checkpoint(
    context: dg.AssetExecutionContext,
    config: TuneConfig,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    settings = TrainSettings(**config.model_dump())
    _, summary = tune(warehouse.get(), domain, policy, mlflow, artifacts.get(), settings, context.log)
    return dg.MaterializeResult(metadata=as_metadata(summary))


def latest_checkpoint(instance: dg.DagsterInstance, db: Warehouse, mlflow: MlflowResource) -> Policy:
    """The checkpoint tuned_checkpoint materialized last: what the promotion gate judges and eval_report describes."""
    latest = instance.get_latest_materialization_event(tuned_checkpoint.key)
    if latest is None:
        raise StageError("tuned_checkpoint has never been materialized")
    return checkpoint_policy(db, latest.asset_materialization.metadata["checkpoint_id"].value, mlflow)

"""tuned_checkpoint: DPO with LoRA on best-versus-worst pairs, merged, tracked and registered in MLflow."""

import json
import shutil

import dagster as dg
import polars as pl

from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.policy import Policy, checkpoint_policy, current_policy
from tao_dagster.defs.resources import (
    TRANSIENT_RETRY,
    ArtifactStoreResource,
    DomainResource,
    MlflowResource,
    PolicyResource,
    WarehouseResource,
    stops_when_interrupted,
    tao_home,
)
from tao_dagster.defs.scores import candidate_rewards, reward_scores
from tao_dagster.hardware import compute_precision
from tao_dagster.training import TrainSettings, build_pairs, checkpoint_id, train_dpo
from tao_dagster.warehouse import Warehouse


class TuneConfig(dg.Config, TrainSettings):
    """DPO settings, editable in the launchpad (see TrainSettings for each field's meaning)."""


@dg.asset(
    deps=[dg.AssetDep(reward_scores, partition_mapping=dg.AllPartitionMapping())],
    group_name="tao",
    kinds={"pytorch", "mlflow"},
    retry_policy=TRANSIENT_RETRY,
    op_tags=gpu_step(),
    description="The current policy (champion, else base) tuned with TRL DPO + LoRA on each training prompt's "
    "best-versus-worst candidates from that policy, with the plain prompt (no exploration scaffolding). LoRA merged, "
    "saved as a standalone model, logged and registered in MLflow; the promotion gate decides whether it becomes the "
    "champion. Same parent, settings and pairs give the same checkpoint, which is reused; a killed or failed run of it "
    "resumes from its last Trainer checkpoint.",
)
@stops_when_interrupted
def tuned_checkpoint(
    context: dg.AssetExecutionContext,
    config: TuneConfig,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    spec = domain.load()
    db = warehouse.get()
    settings = TrainSettings(**config.model_dump())
    parent = current_policy(db, policy, mlflow)
    scored = candidate_rewards(db, spec.build_scorers())
    # On-policy data only: candidates of an older policy are stale for a round that starts from this one.
    rewards = scored.filter(pl.col("policy_version") == parent.version)
    stale = scored.height - rewards.height
    context.log.info(f"parent {parent.version}: {rewards.height} scored candidates, {stale} from other policies left out")
    pairs = build_pairs(rewards, settings)
    if pairs.height == 0:
        raise dg.Failure(
            f"no training pairs among {rewards['prompt_id'].n_unique()} prompts scored under {parent.version} "
            f"({stale} candidates of other policies are not used): materialize candidate_responses and reward_scores "
            f"for new partitions, lower min_chosen_reward ({settings.min_chosen_reward}) or min_margin ({settings.min_margin})",
            allow_retries=False,
        )
    ckpt, data_hash = checkpoint_id(parent.version, settings, pairs)
    out_dir = tao_home() / "checkpoints" / ckpt
    work_dir = tao_home() / "work" / ckpt  # Trainer checkpoints, kept until the round is recorded
    known = db.query("select * from checkpoints where checkpoint_id = ?", [ckpt])
    if known.height and (out_dir / "config.json").is_file():
        context.log.info(f"checkpoint {ckpt} already trained on exactly these pairs: reusing it")
        row = known.row(0, named=True)
        metrics = json.loads(row["metrics"])
        run_id, model_version = row["mlflow_run_id"], row["model_version"]
    else:
        messages = {pid: json.loads(m) for pid, m in rewards.select("prompt_id", "messages").unique("prompt_id").iter_rows()}
        records = [
            {
                "prompt": spec.messages(messages[pid]),  # the plain prompt, as served
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            for pid, chosen, rejected in pairs.select("prompt_id", "chosen", "rejected").iter_rows()
        ]
        precision = compute_precision()
        context.log.info(f"training {ckpt} on {len(records)} pairs from {parent.path} in {precision.dtype} ({precision.reason})")
        with mlflow.start_run(run_name=f"dpo-{ckpt}") as run:
            import mlflow as mlf

            mlf.log_params(
                {
                    **settings.model_dump(),
                    "parent": parent.version,
                    "algorithm": "dpo-lora",
                    "data_hash": data_hash,
                    "pairs": pairs.height,
                    "domain": spec.name,
                    **precision.metadata(),
                }
            )
            metrics = train_dpo(parent.path, records, settings, out_dir, work_dir, policy.train_processes, precision)
            for step, loss in enumerate(metrics["loss_curve"], start=1):
                mlf.log_metric("train_loss", loss, step=step)
            mlf.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})  # not the curve or the precision
            mlf.log_dict(pairs.head(50).to_dicts(), "pairs_sample.json")
            mlf.log_artifacts(str(out_dir), artifact_path="model")
            run_id, model_version = run.info.run_id, mlflow.register(run)
        with db.transaction() as con:
            db.insert(
                con,
                "checkpoints",
                pl.DataFrame(
                    [
                        {
                            "checkpoint_id": ckpt,
                            "parent": parent.version,
                            "algorithm": "dpo-lora",
                            "config": settings.model_dump_json(),
                            "data_hash": data_hash,
                            "path": str(out_dir),
                            "mlflow_run_id": run_id,
                            "model_version": str(model_version),
                            "metrics": json.dumps(metrics),
                        }
                    ]
                ),
            )
        shutil.rmtree(work_dir, ignore_errors=True)
    published = artifacts.publish(out_dir, "checkpoints")
    return dg.MaterializeResult(
        metadata={
            "checkpoint_id": ckpt,
            "parent": parent.version,
            "path": dg.MetadataValue.path(str(out_dir)),
            **({"published": dg.MetadataValue.path(published)} if published else {}),
            "pairs": pairs.height,
            "stale_candidates_left_out": stale,
            "mean_chosen_reward": float(pairs["chosen_reward"].mean()),
            "mean_rejected_reward": float(pairs["rejected_reward"].mean()),
            "train_loss": metrics["train_loss"],
            "final_reward_accuracy": metrics["final_reward_accuracy"],
            "steps": metrics["steps"],
            "resumed_from_step": metrics.get("resumed_from_step", 0),
            "train_seconds": round(metrics["train_seconds"], 1),
            "train_tokens_per_second": round(metrics.get("tokens_per_second", 0.0), 1),  # absent from older rounds' metrics
            "precision": metrics.get("precision", "bfloat16"),  # trained in; rounds before the choice was made were bf16
            "mlflow_run_id": run_id,
            "registered_model_version": f"{mlflow.registered_model} v{model_version}",
        }
    )


def latest_checkpoint(instance: dg.DagsterInstance, db: Warehouse, mlflow: MlflowResource) -> Policy:
    """The checkpoint tuned_checkpoint materialized last: what the promotion gate judges and eval_report describes."""
    latest = instance.get_latest_materialization_event(tuned_checkpoint.key)
    if latest is None:
        raise dg.Failure("tuned_checkpoint has never been materialized", allow_retries=False)
    return checkpoint_policy(db, latest.asset_materialization.metadata["checkpoint_id"].value, mlflow)

"""The promotion gate: a tuned checkpoint becomes the champion only if it beats the base and the champion."""

import dagster as dg

from tao_dagster.defs.checkpoint import latest_checkpoint, tuned_checkpoint
from tao_dagster.defs.deploy import gpu_step
from tao_dagster.defs.heldout import answer_rewards, heldout_answers, heldout_prompts, pointwise_scorers
from tao_dagster.defs.policy import base_policy, champion_policy
from tao_dagster.defs.resources import (
    TRANSIENT_RETRY,
    DomainResource,
    MlflowResource,
    PolicyResource,
    WarehouseResource,
    stops_when_interrupted,
)
from tao_dagster.evaluation import compare, promotion_decision
from tao_dagster.hardware import compute_precision


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
@stops_when_interrupted
def promotion_gate(
    context: dg.AssetCheckExecutionContext,
    domain: DomainResource,
    policy: PolicyResource,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.AssetCheckResult:
    db = warehouse.get()
    candidate = latest_checkpoint(context.instance, db, mlflow)
    champion = champion_policy(db, mlflow)
    if champion and champion.checkpoint_id == candidate.checkpoint_id:
        return dg.AssetCheckResult(passed=True, metadata={"decision": "already the champion", "champion": candidate.version})

    spec = domain.load()
    scorers = pointwise_scorers(spec.build_scorers())
    prompts = heldout_prompts(db, domain)
    references = {"base": base_policy(policy), **({"champion": champion} if champion else {})}
    models = {**references, "candidate": candidate}
    rewards = {name: answer_rewards(heldout_answers(db, spec, policy, p, prompts), scorers) for name, p in models.items()}
    comparisons = {name: compare(rewards[name], rewards["candidate"]) for name in references}
    promote, why = promotion_decision(comparisons)
    previous = champion.version if champion else references["base"].version
    client = mlflow.client()
    client.set_model_version_tag(mlflow.registered_model, candidate.model_version, "promotion_gate", "passed" if promote else "failed")
    client.set_model_version_tag(mlflow.registered_model, candidate.model_version, "promotion_gate_reason", why)
    if promote:
        mlflow.promote(candidate.model_version)
    context.log.info(f"promotion gate for {candidate.version}: {'promoted' if promote else 'kept ' + previous}: {why}")
    return dg.AssetCheckResult(
        passed=promote,
        metadata={
            "decision": f"promoted {candidate.version} over {previous}" if promote else f"not promoted: {previous} stays champion",
            "reason": why,
            "champion": candidate.version if promote else previous,
            "registered_model_version": f"{mlflow.registered_model} v{candidate.model_version}",
            **{f"diff_vs_{name}": c["diff"] for name, c in comparisons.items()},
            **{f"diff_vs_{name}_ci_low": c["diff_ci_low"] for name, c in comparisons.items()},
            "heldout_prompts": prompts.height,
            **compute_precision().metadata(),
        },
    )

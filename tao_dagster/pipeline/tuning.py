"""The tuned checkpoint: the configured algorithm (SFT on each prompt's best candidate from the current policy, DPO on
its best-versus-worst pairs, or SFT then DPO) with LoRA, merged, tracked and registered in MLflow. The same parent,
settings and data give the same checkpoint."""

import json
import logging
import shutil
import time
from dataclasses import dataclass

import polars as pl

from tao_dagster.domain import Domain, DomainSettings
from tao_dagster.errors import StageError
from tao_dagster.hardware import compute_precision
from tao_dagster.paths import tao_home
from tao_dagster.pipeline.candidates import PRODUCTION
from tao_dagster.pipeline.scores import candidate_rewards
from tao_dagster.policies import Policy, PolicySettings, checkpoint_policy, current_policy
from tao_dagster.storage import ArtifactStore
from tao_dagster.tracking import Tracking
from tao_dagster.training import TrainSettings, build_pairs, checkpoint_id, domain_reward, dpo_records, sft_records, sft_targets, train
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """What a round trains on: the parent's scored candidates, the SFT targets, DPO pairs or GRPO prompts its
    algorithm uses (empty where it uses none), and the checkpoint they make."""

    rewards: pl.DataFrame
    targets: pl.DataFrame
    pairs: pl.DataFrame
    prompt_ids: list[str]  # GRPO's: the prompts the policy samples groups for
    stale: int  # candidates of other policies, left out
    checkpoint_id: str
    data_hash: str


def training_data(db: Warehouse, spec: Domain, parent: Policy, settings: TrainSettings) -> TrainingData:
    """On-policy data only: candidates of an older policy are stale for a round that starts from this one."""
    scored = candidate_rewards(db, spec.build_scorers())  # all policies' candidates, to count the stale ones
    rewards = scored.filter(pl.col("policy_version") == parent.version)
    # Production's replies are left out too (another model's answers to the application's own prompt), but they
    # are not stale candidates, so not counted as such.
    stale = scored.filter(pl.col("strategy") != PRODUCTION).height - rewards.height
    uses = settings.algorithm.split("+")
    targets = sft_targets(rewards if "sft" in uses else rewards.clear(), settings)  # empty, with its columns, where unused
    pairs = build_pairs(rewards if "dpo" in uses else rewards.clear(), settings)
    prompt_ids = sorted(rewards["prompt_id"].unique()) if "grpo" in uses else []
    if "grpo" in uses and not prompt_ids:
        raise StageError(f"no training prompts scored under {parent.version}: materialize candidate_responses and reward_scores first")
    missing = [name for name, stage, data in (("pairs", "dpo", pairs), ("targets", "sft", targets)) if stage in uses and data.height == 0]
    if missing:
        raise StageError(
            f"no training {' or '.join(missing)} among {rewards['prompt_id'].n_unique()} prompts scored "
            f"under {parent.version} ({stale} candidates of other policies are not used): materialize candidate_responses "
            f"and reward_scores for new partitions, or lower min_margin ({settings.min_margin}), min_z_margin "
            f"({settings.min_z_margin}), min_chosen_z ({settings.min_chosen_z}) or min_chosen_reward ({settings.min_chosen_reward})"
        )
    return TrainingData(rewards, targets, pairs, prompt_ids, stale, *checkpoint_id(parent.version, settings, pairs, targets, prompt_ids))


def plain_prompts(spec: Domain, rewards: pl.DataFrame) -> dict[str, tuple[list[dict], list[dict] | None]]:
    """Each prompt as served, with the tools production offered: the plain prompt, never the exploration scaffolding
    its candidates came from."""
    prompts = rewards.select("prompt_id", "messages", "tools").unique("prompt_id")
    return {pid: (spec.messages(json.loads(m)), json.loads(t or "null")) for pid, m, t in prompts.iter_rows()}


def grpo_records(data: TrainingData, prompts: dict[str, tuple[list[dict], list[dict] | None]]) -> list[dict]:
    """GRPO's prompts: the plain messages the policy answers, and the id and text the scorers read (tool definitions
    do not reach GRPO's sampling)."""
    texts = dict(data.rewards.select("prompt_id", "text").unique("prompt_id").iter_rows())
    return [{"prompt": prompts[pid][0], "prompt_id": pid, "text": texts[pid]} for pid in data.prompt_ids]


def log_training_metrics(tracking: Tracking, run_id: str, metrics: dict) -> None:
    """The loss curve, then the numeric metrics, in one log_batch: requests of up to 1000 metrics, each applied whole,
    so an attempt that fails while logging leaves whole batches, and `steps` (in the last) says whether all were logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    curve = [Metric("train_loss", loss, now, step) for step, loss in enumerate(metrics["loss_curve"], start=1)]
    numbers = [Metric(k, v, now, 0) for k, v in metrics.items() if isinstance(v, int | float)]  # not the curve or the precision
    tracking.client().log_batch(run_id, metrics=curve + numbers)


def train_and_register(
    db: Warehouse,
    spec: Domain,
    parent: Policy,
    data: TrainingData,
    settings: TrainSettings,
    policy: PolicySettings,
    tracking: Tracking,
    log,
) -> dict:
    """Train the checkpoint, log and register it in MLflow and record it in the warehouse; its checkpoints row."""
    ckpt, pairs, algorithm = data.checkpoint_id, data.pairs, settings.algorithm
    out_dir, work_dir = tao_home() / "checkpoints" / ckpt, tao_home() / "work" / ckpt  # work: Trainer checkpoints, until recorded
    prompts = plain_prompts(spec, data.rewards)
    records = {"sft": sft_records(data.targets, prompts), "dpo": dpo_records(pairs, prompts), "grpo": grpo_records(data, prompts)}
    precision = compute_precision()
    log.info(
        f"training {ckpt} ({algorithm}) on {data.targets.height} targets, {pairs.height} pairs and {len(data.prompt_ids)} "
        f"online prompts from {parent.path} "
        f"in {precision.dtype} ({precision.reason})"
    )
    with tracking.checkpoint_run(ckpt, f"{algorithm}-{ckpt}") as run:
        import mlflow

        params = {"parent": parent.version, "data_hash": data.data_hash, "pairs": pairs.height, "targets": data.targets.height}
        params["prompts"] = len(data.prompt_ids)
        params = {**settings.model_dump(), **params, "domain": spec.name, **precision.metadata()}
        mlflow.log_params({k: v for k, v in params.items() if k not in run.data.params})  # a resumed run has some already
        reward = domain_reward(spec.build_scorers()) if data.prompt_ids else None
        metrics = train(parent.path, records, settings, out_dir, work_dir, policy.train_processes, precision, reward)
        if "steps" not in run.data.metrics:  # else logged by the attempt this run is resumed from
            log_training_metrics(tracking, run.info.run_id, metrics)
        mlflow.log_dict(pairs.head(50).to_dicts(), "pairs_sample.json")
        mlflow.log_dict(data.targets.head(50).to_dicts(), "targets_sample.json")
        mlflow.log_artifacts(str(out_dir), artifact_path="model")
        model_version, run_id = tracking.register(run, ckpt)  # a killed run of this checkpoint may have registered it
    row = {
        "checkpoint_id": ckpt,
        "parent": parent.version,
        "algorithm": algorithm,
        "config": settings.model_dump_json(),
        "data_hash": data.data_hash,
        "path": str(out_dir),
        "mlflow_run_id": run_id,
        "model_version": str(model_version),
        "metrics": json.dumps(metrics),
    }
    db.upsert("checkpoints", pl.DataFrame([row]))
    shutil.rmtree(work_dir, ignore_errors=True)
    return row


def tune(
    db: Warehouse,
    domain: DomainSettings,
    policy: PolicySettings,
    tracking: Tracking,
    artifacts: ArtifactStore,
    settings: TrainSettings,
    log=logger,
) -> tuple[Policy, dict]:
    """Train the current policy on its own scored candidates, or reuse the checkpoint already trained on exactly
    this data; a killed run of it resumes from its last Trainer checkpoint. Returns (the checkpoint, a summary)."""
    spec = domain.load()
    parent = current_policy(db, policy, tracking)
    data = training_data(db, spec, parent, settings)
    log.info(f"parent {parent.version}: {data.rewards.height} scored candidates, {data.stale} from other policies left out")
    ckpt, pairs, out_dir = data.checkpoint_id, data.pairs, tao_home() / "checkpoints" / data.checkpoint_id
    row = db.checkpoint(ckpt)
    if row and (out_dir / "config.json").is_file():
        log.info(f"checkpoint {ckpt} already trained on exactly this data: reusing it")
    else:
        row = train_and_register(db, spec, parent, data, settings, policy, tracking, log)
    metrics = json.loads(row["metrics"])
    published = artifacts.publish(out_dir, "checkpoints")
    summary = {
        "checkpoint_id": ckpt,
        "parent": parent.version,
        "path": out_dir,
        **({"published": published} if published else {}),
        "algorithm": settings.algorithm,
        "targets": data.targets.height,
        "pairs": pairs.height,
        "online_prompts": len(data.prompt_ids),
        "stale_candidates_left_out": data.stale,
        **({"mean_target_reward": float(data.targets["reward"].mean())} if data.targets.height else {}),
        **(
            {"mean_chosen_reward": float(pairs["chosen_reward"].mean()), "mean_rejected_reward": float(pairs["rejected_reward"].mean())}
            if pairs.height
            else {}
        ),
        "train_loss": metrics["train_loss"],
        **({"final_reward_accuracy": metrics["final_reward_accuracy"]} if pairs.height else {}),
        "steps": metrics["steps"],
        "resumed_from_step": metrics.get("resumed_from_step", 0),
        "train_seconds": round(metrics["train_seconds"], 1),
        "train_tokens_per_second": round(metrics.get("tokens_per_second", 0.0), 1),  # absent from older rounds' metrics
        "precision": metrics.get("precision", "bfloat16"),  # trained in; rounds before the choice was made were bf16
        "mlflow_run_id": row["mlflow_run_id"],
        "registered_model_version": f"{tracking.registered_model} v{row['model_version']}",
    }
    return checkpoint_policy(db, ckpt, tracking), summary

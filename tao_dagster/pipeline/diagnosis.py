"""Why a round did not lift, in terms a user can act on: the training data it had, and what to change."""

import json

import polars as pl

from tao_dagster.domain import Domain
from tao_dagster.pipeline.scores import policy_rewards
from tao_dagster.warehouse import Warehouse

FEW_PAIRS, FEW_STEPS = 32, 10  # below these a LoRA round on a small model rarely moves its answers
NO_SPREAD = 0.05  # best-of-N within this of the mean: the candidates hardly differ
LOW_CEILING = 0.3  # the best candidates themselves score this low: the scorers or the format are off


def why_no_lift(db: Warehouse, spec: Domain, checkpoint: dict) -> dict:
    """The round's training facts (prompts, targets, pairs, steps, mean and best-of-N reward of the parent's candidates)
    and the first advice that applies to them."""
    metrics = json.loads(checkpoint["metrics"])
    rewards = policy_rewards(db, spec.build_scorers(), checkpoint["parent"])
    per_prompt = rewards.group_by("prompt_id").agg(pl.col("reward").mean().alias("mean"), pl.col("reward").max().alias("best"))
    facts = {
        "training_prompts": per_prompt.height,
        "targets": int(metrics.get("targets", 0)),
        "pairs": int(metrics.get("pairs", 0)),
        "online_prompts": int(metrics.get("prompts", 0)),
        "steps": int(metrics.get("steps", 0)),
        "mean_reward": float(per_prompt["mean"].mean() or 0.0),
        "best_of_n_reward": float(per_prompt["best"].mean() or 0.0),
    }
    spread = facts["best_of_n_reward"] - facts["mean_reward"]
    if facts["best_of_n_reward"] < LOW_CEILING:
        advice = (
            f"even the best candidates score {facts['best_of_n_reward']:.2f}: check that the instruction asks for the format "
            "the scorers read (field names, allowed values) and the scorers' settings, on a few candidates by hand"
        )
    elif spread < NO_SPREAD:
        advice = (
            f"the candidates hardly differ (best-of-N {facts['best_of_n_reward']:.2f} against a mean of {facts['mean_reward']:.2f}): "
            "exploration finds nothing better to learn; use `strategies: auto`, sweep a categorical field, or raise temperature or samples"
        )
    elif max(facts["pairs"], facts["targets"], facts["online_prompts"]) < FEW_PAIRS or facts["steps"] < FEW_STEPS:
        advice = (
            f"only {facts['targets']} targets, {facts['pairs']} pairs and {facts['steps']} optimiser steps: ingest more "
            "prompts, or lower min_chosen_z, min_margin or min_chosen_reward in the tuned_checkpoint config"
        )
    else:
        advice = (
            f"the data has a gap to learn (best-of-N {facts['best_of_n_reward']:.2f} against a mean of {facts['mean_reward']:.2f}) "
            "but the tuned model did not learn it: train longer (epochs), or raise learning_rate or lora_r"
        )
    return {**facts, "advice": advice}

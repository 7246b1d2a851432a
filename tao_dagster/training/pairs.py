"""What a round teaches: best-versus-worst pairs per prompt, their checkpoint identity and TRL's records of them.

Pairs are built with the *plain* prompt, never the exploration scaffolding that produced the
candidates, so the tuned model learns to answer well without it and serves at the base model's cost.
No Dagster, no torch: the reward-hacking alarms rank candidates with `best_candidates` too.
"""

import hashlib
import json

import polars as pl

from tao_dagster.training.settings import TrainSettings

# How often to save, and how activations are computed, do not change the trained weights (beyond rounding),
# so they are no part of a checkpoint's identity.
NOT_IN_CHECKPOINT_ID = {"save_steps", "share_prompts", "gradient_checkpointing"}


def _first_per_prompt(candidates: pl.DataFrame, best: bool) -> pl.DataFrame:
    """Each prompt's best (or worst) candidate by reward. Ties go to the shorter answer for the best (cheaper to
    serve) and the longer one for the worst, then to the lower candidate_id, so every caller picks the same row."""
    chars = pl.col("response").str.len_chars()
    ranked = candidates.sort([pl.col("reward"), chars, pl.col("candidate_id")], descending=[best, not best, False])
    return ranked.group_by("prompt_id", maintain_order=True).first()


def best_candidates(candidates: pl.DataFrame) -> pl.DataFrame:
    """Each prompt's best candidate (prompt_id, candidate_id, response, reward): training's chosen answer, and
    what the reward-hacking alarms inspect, so they inspect what training teaches."""
    return _first_per_prompt(candidates, best=True)


def build_pairs(candidates: pl.DataFrame, settings: TrainSettings) -> pl.DataFrame:
    """One (chosen, rejected) pair per prompt: its best and worst candidate by combined reward.

    `candidates` needs prompt_id, candidate_id, response, reward; ties are broken as in `best_candidates`.
    """
    best, worst = best_candidates(candidates), _first_per_prompt(candidates, best=False)
    pairs = best.select(
        "prompt_id",
        pl.col("candidate_id").alias("chosen_id"),
        pl.col("response").alias("chosen"),
        pl.col("reward").alias("chosen_reward"),
    ).join(
        worst.select(
            "prompt_id",
            pl.col("candidate_id").alias("rejected_id"),
            pl.col("response").alias("rejected"),
            pl.col("reward").alias("rejected_reward"),
        ),
        on="prompt_id",
    )
    margin = pl.col("chosen_reward") - pl.col("rejected_reward")
    pairs = pairs.filter((margin >= settings.min_margin) & (pl.col("chosen_reward") >= settings.min_chosen_reward))
    if settings.max_pairs:
        pairs = pairs.sort([margin, pl.col("prompt_id")], descending=[True, False]).head(settings.max_pairs)
    return pairs.sort("prompt_id")


def checkpoint_id(parent: str, settings: TrainSettings, pairs: pl.DataFrame) -> tuple[str, str]:
    """(checkpoint id, data hash): the same parent, config and pairs give the same checkpoint."""
    data = "\n".join(f"{a}:{b}:{c}" for a, b, c in pairs.select("prompt_id", "chosen_id", "rejected_id").iter_rows())
    data_hash = hashlib.sha256(data.encode()).hexdigest()[:16]
    config = settings.model_dump(exclude=NOT_IN_CHECKPOINT_ID)
    spec = json.dumps({"parent": parent, "algorithm": "dpo-lora", "config": config, "data": data_hash}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12], data_hash


def dpo_records(pairs: pl.DataFrame, plain_prompts: dict[str, list[dict]]) -> list[dict]:
    """TRL conversational records of `pairs` (prompt_id, chosen, rejected) for `train_dpo`, each prompt the plain
    messages `plain_prompts` maps its prompt_id to: the prompt as served, not the scaffolding that explored it."""
    return [
        {
            "prompt": plain_prompts[pid],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for pid, chosen, rejected in pairs.select("prompt_id", "chosen", "rejected").iter_rows()
    ]

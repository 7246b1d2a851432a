"""What a round teaches: each prompt's best candidate against the candidates clearly worse than it, their checkpoint
identity and TRL's records of them.

Pairs are chosen relative to each prompt (its own reward mean and spread), not by an absolute reward floor, so a
domain whose rewards are all low still learns from its better answers. Among a prompt's worse answers, those of the
same form as the chosen one (the same JSON keys, the same length band) come first: such a pair differs in content
only, so it teaches content rather than format.

Pairs are built with the *plain* prompt, never the exploration scaffolding that produced the
candidates, so the tuned model learns to answer well without it and serves at the base model's cost.
No Dagster, no torch: the reward-hacking alarms rank candidates with `best_candidates` too.
"""

import hashlib
import json

import polars as pl

from tao_dagster.rewards.base import extract_json
from tao_dagster.training.settings import TrainSettings

# How often to save, and how activations are computed, do not change the trained weights (beyond rounding),
# so they are no part of a checkpoint's identity.
NOT_IN_CHECKPOINT_ID = {"save_steps", "share_prompts", "gradient_checkpointing"}
# Two answers are in the same length band when the longer has at most this many times the other's characters.
LENGTH_BAND = 1.5


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


def answer_shape(response: str) -> str:
    """An answer's form without its content: a JSON object's keys, and whether it is the whole answer; else text."""
    obj, alone = extract_json(response)
    if obj is None:
        return "text"
    return ("json:" if alone else "json in text:") + ",".join(sorted(obj))


def build_pairs(candidates: pl.DataFrame, settings: TrainSettings) -> pl.DataFrame:
    """Up to `pairs_per_prompt` (chosen, rejected) pairs per prompt: its best candidate against candidates clearly
    worse for that prompt, those of the same form as the best first, then the widest margins; `max_pairs` then keeps
    every prompt's first pair before any prompt's second, and within each of those, pairs of the same form first,
    then the widest margins.

    `candidates` needs prompt_id, candidate_id, response, reward; ties are broken as in `best_candidates`. The
    per-prompt z-score is taken over the candidates given (the parent's own), not combine's `reward_z`, which
    counts every policy's candidates of the prompt.
    """
    reward = pl.col("reward")
    scored = candidates.with_columns(
        z=(reward - reward.mean().over("prompt_id")) / (reward.std(ddof=0).over("prompt_id") + 1e-6),
        shape=pl.col("response").map_elements(answer_shape, return_dtype=pl.String),
        chars=pl.col("response").str.len_chars(),
    )
    best = best_candidates(scored).filter((pl.col("z") >= settings.min_chosen_z) & (reward >= settings.min_chosen_reward))
    pairs = best.select(
        "prompt_id",
        pl.col("candidate_id").alias("chosen_id"),
        pl.col("response").alias("chosen"),
        pl.col("reward").alias("chosen_reward"),
        pl.col("z").alias("chosen_z"),
        pl.col("shape").alias("chosen_shape"),
        pl.col("chars").alias("chosen_chars"),
    ).join(
        scored.select(
            "prompt_id",
            pl.col("candidate_id").alias("rejected_id"),
            pl.col("response").alias("rejected"),
            pl.col("reward").alias("rejected_reward"),
            "z",
            "shape",
            "chars",
        ),
        on="prompt_id",
    )
    margin = pl.col("chosen_reward") - pl.col("rejected_reward")
    lengths = pl.max_horizontal("chosen_chars", "chars") / pl.max_horizontal(pl.min_horizontal("chosen_chars", "chars"), 1)
    pairs = (
        pairs.filter((margin > 0) & (margin >= settings.min_margin) & (pl.col("chosen_z") - pl.col("z") >= settings.min_z_margin))
        .with_columns(margin=margin, same_form=(pl.col("shape") == pl.col("chosen_shape")) & (lengths <= LENGTH_BAND))
        .sort(["prompt_id", "same_form", "margin", "chars", "rejected_id"], descending=[False, True, True, True, False])
        .with_columns(rank=pl.int_range(pl.len()).over("prompt_id"))
        .filter(pl.col("rank") < settings.pairs_per_prompt)
    )
    if settings.max_pairs:
        pairs = pairs.sort(["rank", "same_form", "margin", "prompt_id"], descending=[False, True, True, False]).head(settings.max_pairs)
    columns = ["prompt_id", "chosen_id", "chosen", "chosen_reward", "rejected_id", "rejected", "rejected_reward", "same_form"]
    return pairs.sort("prompt_id", "rank").select(columns)


def checkpoint_id(parent: str, settings: TrainSettings, pairs: pl.DataFrame) -> tuple[str, str]:
    """(checkpoint id, data hash): the same parent, config and pairs give the same checkpoint."""
    data = "\n".join(f"{a}:{b}:{c}" for a, b, c in pairs.select("prompt_id", "chosen_id", "rejected_id").iter_rows())
    data_hash = hashlib.sha256(data.encode()).hexdigest()[:16]
    config = settings.model_dump(exclude=NOT_IN_CHECKPOINT_ID)
    spec = json.dumps({"parent": parent, "algorithm": "dpo-lora", "config": config, "data": data_hash}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:12], data_hash


def dpo_records(pairs: pl.DataFrame, plain_prompts: dict[str, tuple[list[dict], list[dict] | None]]) -> list[dict]:
    """TRL conversational records of `pairs` (prompt_id, chosen, rejected) for `train_dpo`, each prompt the plain
    messages and tool definitions `plain_prompts` maps its prompt_id to: the prompt as served, not the scaffolding
    that explored it. When any prompt has tools, every record has TRL's `tools` field (JSON text, None without)."""
    with_tools = any(plain_prompts[pid][1] for pid in pairs["prompt_id"])
    records = []
    for pid, chosen, rejected in pairs.select("prompt_id", "chosen", "rejected").iter_rows():
        messages, tools = plain_prompts[pid]
        record = {
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        records.append(record | {"tools": json.dumps(tools) if tools else None} if with_tools else record)
    return records

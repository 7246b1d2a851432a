"""Reward scores: every candidate scored by the domain's label-free scorers, combined per prompt."""

import logging

import polars as pl

from tao_dagster.diagnostics import Alarm, alarm_rows, calibrate, candidate_alarms, per_scorer, scorer_agreement, spearman
from tao_dagster.domain import DomainSettings
from tao_dagster.evaluation import Markdown, markdown_table
from tao_dagster.rewards import Scored, Scorer, combine, score_frame
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)


def scored_items(frame: pl.DataFrame) -> list[Scored]:
    """What the scorers read of each row of a frame with prompt_id, text (the prompt) and response."""
    return [Scored(pid, text, response) for pid, text, response in frame.select("prompt_id", "text", "response").iter_rows()]


def current_scores(db: Warehouse, scorers: list[Scorer], partitions: list[str] | None = None) -> pl.DataFrame:
    """Scores by the current version of each scorer, of the candidates in these partitions (all if None)."""
    current = pl.DataFrame({"scorer": [s.name for s in scorers], "scorer_version": [s.version for s in scorers]})
    return db.scores(partitions).join(current, on=["scorer", "scorer_version"])


def candidate_rewards(db: Warehouse, scorers: list[Scorer], partitions: list[str] | None = None) -> pl.DataFrame:
    """Candidates with their combined reward under the current scorer versions (all partitions if None)."""
    return db.candidates(partitions).join(combine(current_scores(db, scorers, partitions), scorers), on=["candidate_id", "prompt_id"])


def policy_rewards(db: Warehouse, scorers: list[Scorer], policy_version: str) -> pl.DataFrame:
    """The rewards of one policy's candidates: what a round from that policy trains on."""
    return candidate_rewards(db, scorers).filter(pl.col("policy_version") == policy_version)


def score_missing(db: Warehouse, scorers: list[Scorer], partitions: list[str]) -> dict[str, int]:
    """Score what lacks a score from the current version of each scorer; group scorers redo whole prompts."""
    candidates = db.candidates(partitions)
    done = db.scores(partitions)
    written = {}
    for scorer in scorers:
        have = set(done.filter((pl.col("scorer") == scorer.name) & (pl.col("scorer_version") == scorer.version))["candidate_id"])
        todo = candidates.filter(~pl.col("candidate_id").is_in(list(have)))
        if scorer.group and todo.height:
            todo = candidates.filter(pl.col("prompt_id").is_in(todo["prompt_id"].unique().to_list()))
        if todo.height:
            db.upsert("scores", score_frame(scored_items(todo), todo["candidate_id"].to_list(), [scorer]))
        written[scorer.name] = todo.height
    return written


def score_partitions(db: Warehouse, domain: DomainSettings, partitions: list[str], log=logger) -> tuple[dict, list[Alarm]]:
    """Score what is missing in these partitions; (a summary of their rewards, the reward-hacking alarms)."""
    spec = domain.load()
    scorers = spec.build_scorers()
    written = score_missing(db, scorers, partitions)
    log.info(f"scores written per scorer: {written}")
    rewards = candidate_rewards(db, scorers, partitions)
    scores = current_scores(db, scorers, partitions)
    best = rewards.group_by("prompt_id").agg(pl.col("reward").max())["reward"]
    per_strategy = (
        rewards.group_by("strategy", "sampling")
        .agg(
            pl.len().alias("candidates"),
            pl.col("reward").mean().alias("mean_reward"),
            (pl.col("reward_z") > 0).mean().alias("above_prompt_mean"),
        )
        .sort("mean_reward", descending=True)
    )
    gold = calibrate(pl.read_csv(spec.resolve(spec.calibration["gold"])), scorers) if spec.calibration.get("gold") else {}
    if gold:
        log.info(f"gold set: {gold}")
    alarms = candidate_alarms(rewards, spec.evaluation.get("answer_field"), spec.diagnostics)
    for alarm in alarms:
        log.warning(f"reward hacking alarm {alarm.name}: {alarm.message}")
    summary = {
        "candidates": rewards.height,
        "scores_written": sum(written.values()),
        "mean_reward": float(rewards["reward"].mean() or 0.0),
        "mean_best_of_n": float(best.mean() or 0.0),
        "reward_length_correlation": spearman(rewards["reward"], rewards["completion_tokens"]),
        "per_scorer": Markdown(markdown_table(per_scorer(scores).to_dicts())),
        "scorer_agreement": Markdown(markdown_table(scorer_agreement(scores).to_dicts())),
        "per_strategy": Markdown(markdown_table(per_strategy.to_dicts())),
        "alarms": Markdown(markdown_table(alarm_rows(alarms)) if alarms else "none"),
        **({"gold_agreement": gold} if gold else {}),
    }
    return summary, alarms

"""From a domain's scorer specs to one reward per candidate: the registry of kinds, the scores of every
scorer, and their weighted mean with its per-prompt z-score."""

import hashlib
import json
from pathlib import Path

import polars as pl

from tao_dagster.rewards.base import FILE, Scored, Scorer
from tao_dagster.rewards.consistency import SelfConsistencyScorer
from tao_dagster.rewards.embeddings import EmbeddingChoiceScorer, EmbeddingRelevanceScorer
from tao_dagster.rewards.execution import PythonScorer, SqlExecutionScorer
from tao_dagster.rewards.judges import LlmJudgeScorer, RewardModelScorer
from tao_dagster.rewards.rules import JsonFieldsScorer, JsonSchemaScorer, LengthScorer, RegexScorer, TermsScorer

SCORERS: dict[str, type[Scorer]] = {
    cls.kind: cls
    for cls in (
        JsonFieldsScorer,
        EmbeddingChoiceScorer,
        EmbeddingRelevanceScorer,
        SelfConsistencyScorer,
        RegexScorer,
        JsonSchemaScorer,
        LengthScorer,
        TermsScorer,
        PythonScorer,
        SqlExecutionScorer,
        LlmJudgeScorer,
        RewardModelScorer,
    )
}


def build_scorers(specs: list[dict], root: Path = Path()) -> list[Scorer]:
    """The domain's scorers; `root` is the folder their file parameters are relative to (the domain file's)."""
    scorers = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in SCORERS:
            raise ValueError(f"scorer {spec.get('name', '?')!r}: unknown kind {kind!r} (known: {sorted(SCORERS)})")
        cls = SCORERS[kind]
        spec |= {k: str((root / spec[k]).resolve()) for k in cls.marked(FILE) if isinstance(spec.get(k), str)}
        scorers.append(cls(name=spec.pop("name", kind), weight=spec.pop("weight", 1.0), **spec))
    if not scorers:
        raise ValueError("a domain needs at least one scorer")
    return scorers


def ensemble_version(scorers: list[Scorer]) -> str:
    spec = json.dumps([(s.name, s.version, s.weight) for s in scorers])
    return hashlib.sha256(spec.encode()).hexdigest()[:8]


def combine(scores: pl.DataFrame, scorers: list[Scorer]) -> pl.DataFrame:
    """Weighted mean of the scorers' scores per candidate, plus its z-score within the prompt.

    `scores` has one row per (candidate_id, prompt_id, scorer). The raw reward is comparable across
    prompts (evaluation uses it); the per-prompt z-score is what pair selection ranks by.
    """
    weights = pl.DataFrame({"scorer": [s.name for s in scorers], "weight": [s.weight for s in scorers]})
    present = scores.join(weights, on="scorer")
    reward = present.group_by("candidate_id", "prompt_id").agg(
        ((pl.col("score") * pl.col("weight")).sum() / pl.col("weight").sum()).alias("reward")
    )
    stats = pl.col("reward")
    return reward.with_columns(
        ((stats - stats.mean().over("prompt_id")) / (stats.std(ddof=0).over("prompt_id") + 1e-6)).alias("reward_z")
    ).sort("candidate_id")


def score_frame(items: list[Scored], ids: list[str], scorers: list[Scorer]) -> pl.DataFrame:
    """Run every scorer over the candidates: one row per candidate and scorer."""
    frames = []
    for scorer in scorers:
        frames.append(
            pl.DataFrame(
                {
                    "candidate_id": ids,
                    "prompt_id": [i.prompt_id for i in items],
                    "scorer": scorer.name,
                    "scorer_version": scorer.version,
                    "score": scorer.score(items),
                },
                schema_overrides={"score": pl.Float64},
            )
        )
    return pl.concat(frames)

"""Held-out answers, shared by the promotion gate and the report: each policy answers each held-out prompt once
(greedy, plain prompt), and the answers are scored by the domain's pointwise scorers."""

import numpy as np
import polars as pl

from tao_dagster.domain import Domain, DomainSettings
from tao_dagster.errors import StageError
from tao_dagster.pipeline.candidates import generate_and_store, plan_requests
from tao_dagster.pipeline.scores import scored_items
from tao_dagster.policies import Policy, PolicySettings
from tao_dagster.rewards import Scorer, combine, score_frame
from tao_dagster.training import best_candidates
from tao_dagster.warehouse import Warehouse

EVAL_ANSWER_COLUMNS = ["policy_version", "prompt_id", "response", "completion_tokens"]
EVAL_CANDIDATE_COLUMNS = ["candidate_id", "prompt_id", "policy_version", "strategy", "sampling", "response", "completion_tokens"]


def heldout_prompts(db: Warehouse, domain: DomainSettings, part: str) -> pl.DataFrame:
    """The held-out prompts of one part: `gate` for promotion decisions, `test` for the report alone."""
    prompts = db.heldout_prompts(part, domain.max_eval_prompts)
    if prompts.height == 0:
        raise StageError(f"no held-out {part} prompts: ingest more log files or raise the domain resource's heldout_fraction")
    return prompts


def heldout_answers(db: Warehouse, spec: Domain, settings: PolicySettings, policy: Policy, prompts: pl.DataFrame) -> pl.DataFrame:
    """The policy's answers to `prompts` (plain prompt, greedy), generating only those not stored yet; sorted by
    prompt id. A prompt too long for the model's window has no answer (see on_common_prompts)."""
    todo = prompts.filter(~pl.col("prompt_id").is_in(db.answers(policy.version)["prompt_id"].to_list()))
    planned = plan_requests(spec, todo, policy.version, set(), strategies=[spec.plain_strategy()])
    generate_and_store(db, "eval_answers", settings, policy, planned, todo.height, EVAL_ANSWER_COLUMNS)
    return db.answers(policy.version).join(prompts.select("prompt_id", "text"), on="prompt_id").sort("prompt_id")


def on_common_prompts(*frames: pl.DataFrame) -> list[pl.DataFrame]:
    """The frames cut to the prompts every one of them answered, so that paired comparisons pair the same prompts:
    a request too long for the model's window is skipped at generation and leaves its prompt unanswered."""
    common = set.intersection(*(set(f["prompt_id"]) for f in frames))
    return [f.filter(pl.col("prompt_id").is_in(list(common))) for f in frames]


def pointwise_scorers(scorers: list[Scorer]) -> list[Scorer]:
    """Scorers that judge one answer alone: a held-out prompt has one answer per model, no group to agree with."""
    return [s for s in scorers if not s.group]


def answer_rewards(answers: pl.DataFrame, scorers: list[Scorer]) -> np.ndarray:
    """Combined reward of each answer, in the frame's (prompt id) order."""
    scores = score_frame(scored_items(answers), answers["prompt_id"].to_list(), scorers)
    return combine(scores, scorers).sort("candidate_id")["reward"].to_numpy()


def best_of_n(db: Warehouse, spec: Domain, settings: PolicySettings, policy: Policy, prompts: pl.DataFrame) -> pl.DataFrame:
    """The ceiling a round distils: the policy's best candidate per prompt, generated with the domain's strategies
    as for training and picked by the full reward as training picks, for measurement only (stored apart from the
    training candidates, never trained on). The frame is shaped like heldout_answers'."""
    todo = list(plan_requests(spec, prompts, policy.version, set(db.eval_candidates(policy.version)["candidate_id"])))
    generate_and_store(db, "eval_candidates", settings, policy, todo, len(todo), EVAL_CANDIDATE_COLUMNS)
    candidates = db.eval_candidates(policy.version).join(prompts.select("prompt_id", "text"), on="prompt_id")
    scorers = spec.build_scorers()
    rewards = combine(score_frame(scored_items(candidates), candidates["candidate_id"].to_list(), scorers), scorers)
    best = best_candidates(candidates.join(rewards, on=["candidate_id", "prompt_id"]))
    return best.select("prompt_id", "response", "completion_tokens", "text").sort("prompt_id")

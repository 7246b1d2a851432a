"""Held-out answers, shared by the promotion gate and the report: each policy answers each held-out prompt once
(greedy, plain prompt), and the answers are scored by the domain's pointwise scorers."""

import json

import numpy as np
import polars as pl

from tao_dagster.domain import Domain, DomainSettings
from tao_dagster.errors import StageError
from tao_dagster.generation import open_engine
from tao_dagster.pipeline.candidates import generate_and_store, plan_requests
from tao_dagster.pipeline.scores import scored_items
from tao_dagster.policies import Policy, PolicySettings
from tao_dagster.rewards import Scorer, combine, score_frame
from tao_dagster.training import best_candidates
from tao_dagster.warehouse import Warehouse

EVAL_CANDIDATE_COLUMNS = ["candidate_id", "prompt_id", "policy_version", "strategy", "sampling", "response", "completion_tokens"]


def heldout_prompts(db: Warehouse, domain: DomainSettings, part: str) -> pl.DataFrame:
    """The held-out prompts of one part: `gate` for promotion decisions, `test` for the report alone."""
    prompts = db.heldout_prompts(part, domain.max_eval_prompts)
    if prompts.height == 0:
        raise StageError(f"no held-out {part} prompts: ingest more log files or raise the domain resource's heldout_fraction")
    return prompts


def heldout_answers(db: Warehouse, spec: Domain, settings: PolicySettings, policy: Policy, prompts: pl.DataFrame) -> pl.DataFrame:
    """The policy's answers to `prompts`, generating only those not stored yet; sorted by prompt id."""
    todo = prompts.filter(~pl.col("prompt_id").is_in(db.answers(policy.version)["prompt_id"].to_list()))
    if todo.height:
        with open_engine(policy.path, settings.engine_settings()) as llm:
            for chunk in todo.iter_slices(settings.generation_chunk):  # stored chunk by chunk, like candidates
                requests = [
                    spec.plain_request(json.loads(m), json.loads(t or "null")) for m, t in chunk.select("messages", "tools").iter_rows()
                ]
                outputs = llm.generate(requests)
                answers = {
                    "policy_version": policy.version,
                    "prompt_id": chunk["prompt_id"],
                    "response": [o.text for o in outputs],
                    "completion_tokens": [o.completion_tokens for o in outputs],
                }
                db.upsert("eval_answers", pl.DataFrame(answers))
    return db.answers(policy.version).join(prompts.select("prompt_id", "text"), on="prompt_id").sort("prompt_id")


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
    todo = plan_requests(spec, prompts, policy.version, set(db.eval_candidates(policy.version)["candidate_id"]))
    generate_and_store(db, "eval_candidates", settings, policy, todo, EVAL_CANDIDATE_COLUMNS)
    candidates = db.eval_candidates(policy.version).join(prompts.select("prompt_id", "text"), on="prompt_id")
    scorers = spec.build_scorers()
    rewards = combine(score_frame(scored_items(candidates), candidates["candidate_id"].to_list(), scorers), scorers)
    best = best_candidates(candidates.join(rewards, on=["candidate_id", "prompt_id"]))
    return best.select("prompt_id", "response", "completion_tokens", "text").sort("prompt_id")

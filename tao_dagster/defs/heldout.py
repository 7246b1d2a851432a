"""Held-out answers, shared by the promotion gate and eval_report: each policy answers each held-out
prompt once (greedy, plain prompt), and the answers are scored by the domain's pointwise scorers."""

import json

import dagster as dg
import numpy as np
import polars as pl

from tao_dagster.defs.policy import Policy
from tao_dagster.defs.resources import DomainResource, PolicyResource
from tao_dagster.domain import Domain
from tao_dagster.generation import open_engine
from tao_dagster.rewards import Scored, Scorer, combine, score_frame
from tao_dagster.warehouse import Warehouse


def heldout_prompts(db: Warehouse, domain: DomainResource) -> pl.DataFrame:
    prompts = db.query("select prompt_id, messages, text from prompts where heldout order by prompt_id")
    if domain.max_eval_prompts:
        prompts = prompts.head(domain.max_eval_prompts)
    if prompts.height == 0:
        raise dg.Failure("no held-out prompts: ingest more log files or raise the domain resource's heldout_fraction", allow_retries=False)
    return prompts


def heldout_answers(db: Warehouse, spec: Domain, engine: PolicyResource, policy: Policy, prompts: pl.DataFrame) -> pl.DataFrame:
    """The policy's answers to `prompts`, generating only those not stored yet; sorted by prompt id."""
    have = db.query("select prompt_id from eval_answers where policy_version = ?", [policy.version])["prompt_id"]
    todo = prompts.filter(~pl.col("prompt_id").is_in(have.to_list()))
    if todo.height:
        with open_engine(policy.path, engine.engine_settings()) as llm:
            for chunk in todo.iter_slices(engine.generation_chunk):  # stored chunk by chunk, like candidates
                outputs = llm.generate([spec.plain_request(json.loads(m)) for m in chunk["messages"]])
                db.upsert(
                    "eval_answers",
                    pl.DataFrame(
                        {
                            "policy_version": policy.version,
                            "prompt_id": chunk["prompt_id"],
                            "response": [o.text for o in outputs],
                            "completion_tokens": [o.completion_tokens for o in outputs],
                        }
                    ),
                )
    return (
        db.query("select prompt_id, response, completion_tokens from eval_answers where policy_version = ?", [policy.version])
        .join(prompts.select("prompt_id", "text"), on="prompt_id")
        .sort("prompt_id")
    )


def pointwise_scorers(scorers: list[Scorer]) -> list[Scorer]:
    """Scorers that judge one answer alone: a held-out prompt has one answer per model, no group to agree with."""
    return [s for s in scorers if not s.group]


def answer_rewards(answers: pl.DataFrame, scorers: list[Scorer]) -> np.ndarray:
    """Combined reward of each answer, in the frame's (prompt id) order."""
    items = [Scored(pid, text, response) for pid, text, response in answers.select("prompt_id", "text", "response").iter_rows()]
    scores = score_frame(items, answers["prompt_id"].to_list(), scorers)
    return combine(scores, scorers).sort("candidate_id")["reward"].to_numpy()
